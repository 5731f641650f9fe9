"""Native CLIP image embedding in mpool vs transformers (processor + model), one
run, one machine, the same random-weight ViT-B/32 (CLIPConfig's defaults) on both
sides, fp32 on the CPU.

(a) bulk: 256 JPEGs of mixed sizes (120 to 900 px a side), embedded from their
    files in one call (mpool) vs PIL open + CLIPImageProcessor + get_image_features
    in batches of 32 (transformers);
(b) 8 client threads, each embedding one image file per request, against the
    transformers pipeline called the same way from 8 threads (one shared model).
Preprocessing is reported apart: PIL decode + the HF processor, vs mpool's
native decode (through a pool model that does nothing) and its native
preprocessing (mpool._core._preprocess_image, one image at a time). Also reports
achieved GFLOP/s of the vision tower against a torch fp32 matmul measured in the
same run.

    python bench/embed_images.py [--n 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, matmul_gflops  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import mpool  # noqa: E402
from mpool import _core  # noqa: E402
from two_tower_models import clip_tokenizer  # noqa: E402



def write_images(folder: Path, n: int) -> list[str]:
    rng = np.random.RandomState(3)
    paths = []
    for i in range(n):
        w, h = int(rng.randint(120, 900)), int(rng.randint(120, 900))
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, ((x + y) * 97 / (w + h)) % 255], -1)
        img = Image.fromarray((base + rng.normal(0, 18, base.shape)).clip(0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = int(rng.randint(0, w - 20)), int(rng.randint(0, h - 20))
            d.ellipse([x0, y0, x0 + int(rng.randint(10, w // 2 + 11)), y0 + int(rng.randint(10, h // 2 + 11))],
                      fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
        p = folder / f"img{i:03d}.jpg"
        img.save(p, "JPEG", quality=90, progressive=bool(i % 4 == 0))
        paths.append(str(p))
    return paths


def save_model(folder: Path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer()
    cfg = CLIPConfig(text_config={"vocab_size": len(tok)}, vision_config={"patch_size": 32})
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    proc = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc.save_pretrained(folder)
    return model, proc


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def concurrent(fn, items: list[str], threads: int) -> float:
    chunks = [items[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def client(chunk):
        start.wait()
        for item in chunk:
            fn(item)

    ts = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0



def vit_flops(images: int, layers=12, hidden=768, inner=3072, tokens=50) -> float:
    per_layer = tokens * 2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * tokens * tokens * hidden
    patch = tokens * 2 * 3 * 32 * 32 * hidden
    return images * (layers * per_layer + patch)


class Nothing:
    dimension = 1

    def embed_images(self, images):
        return np.zeros((len(images), 1), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads-n", type=int, default=128, help="single-image requests in (b)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-replicas", type=int, default=None, help="the CLIP model's max_replicas (default: the pool's)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    tmp = Path(tempfile.mkdtemp(prefix="mpool-bench-images-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the model and images: about 500 MB
    (tmp / "images").mkdir()
    paths = write_images(tmp / "images", args.n)
    model, proc = save_model(tmp / "clip")

    def hf_batch(batch):
        images = [Image.open(p).convert("RGB") for p in batch]
        with torch.no_grad():
            out = model.get_image_features(**proc(images=images, return_tensors="pt"))
        return getattr(out, "pooler_output", out)

    def hf_bulk():
        for i in range(0, len(paths), 32):
            hf_batch(paths[i : i + 32])

    def hf_preprocess():
        proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")

    hf_batch(paths[:4])
    with mpool.Pool(cold_start_replicas=1, request_timeout=3600) as pool:
        pool.register("clip", str(tmp / "clip"), max_replicas=args.max_replicas)
        pool.register("nothing", mpool.PyModel("image_embedding", lambda d: Nothing(), memory_mb=1))
        pool.embed_images("clip", paths[:4])
        ours = pool.embed_images("clip", paths[:8], normalize=False)
        ref = hf_batch(paths[:8]).numpy()
        cos = float(((ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)).min())

        # Each repeat runs both sides back to back (mpool, then transformers), so a
        # load that comes and goes on a shared machine falls on both; medians per side.
        bulk_pairs = [(timed(lambda: pool.embed_images("clip", paths), 1), timed(hf_bulk, 1))
                      for _ in range(args.repeats)]
        mp_bulk = statistics.median(p[0] for p in bulk_pairs)
        hf_bulk_s = statistics.median(p[1] for p in bulk_pairs)
        hf_pre = timed(hf_preprocess, args.repeats)
        mp_decode = timed(lambda: pool.embed_images("nothing", paths), args.repeats)
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        config = str(tmp / "clip" / "preprocessor_config.json")
        mp_pre = timed(lambda: [_core._preprocess_image(config, a) for a in arrays], args.repeats)

        single = paths[: args.threads_n]
        conc_pairs = [
            (concurrent(lambda p: pool.embed_images("clip", p), single, 8), concurrent(lambda p: hf_batch([p]), single, 8))
            for _ in range(args.repeats)
        ]
        mp_conc = statistics.median(p[0] for p in conc_pairs)
        hf_conc = statistics.median(p[1] for p in conc_pairs)
        replicas = pool.stats()["models"]["clip"]["replicas"]
    gf = matmul_gflops()
    flops = vit_flops(args.n)
    print(f"machine: {cpu_name()}; torch {torch.__version__}, threads {args.torch_threads}, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"model: random-weight CLIP ViT-B/32 (88M-parameter vision tower), fp32; parity cosine {cos:.6f}")
    print(f"(a) bulk {args.n} JPEGs, 120-900 px a side, median of {args.repeats}:")
    print(f"    transformers (PIL + processor + model, batches of 32): {args.n / hf_bulk_s:7.1f} images/s")
    print(f"    mpool native (files in one call):                      {args.n / mp_bulk:7.1f} images/s")
    print(f"    ratio mpool / transformers: {hf_bulk_s / mp_bulk:.2f}x  (goal >= 1.5x); per repeat: "
          + ", ".join(f"{h / m:.2f}x" for m, h in bulk_pairs))
    print(f"    preprocessing: transformers PIL decode + processor {hf_pre * 1e3 / args.n:.2f} ms/image; "
          f"mpool native decode {mp_decode * 1e3 / args.n:.2f} ms/image (parallel), "
          f"native preprocess {mp_pre * 1e3 / args.n:.2f} ms/image (one thread)")
    print(f"(b) 8 threads x one image per request, {len(single)} requests, median of {args.repeats}:")
    print(f"    transformers: {len(single) / hf_conc:7.1f} images/s")
    print(f"    mpool native: {len(single) / mp_conc:7.1f} images/s  ({replicas} replicas at the end, "
          f"max_replicas {args.max_replicas or 'default'})")
    print(f"    ratio mpool / transformers: {hf_conc / mp_conc:.2f}x  (goal >= 2x); per repeat: "
          + ", ".join(f"{h / m:.2f}x" for m, h in conc_pairs))
    print(f"compute: mpool bulk {flops / mp_bulk / 1e9:.1f} GFLOP/s, transformers bulk {flops / hf_bulk_s / 1e9:.1f} "
          f"GFLOP/s, torch 1024^3 fp32 matmul {gf:.1f} GFLOP/s (mpool at {flops / mp_bulk / 1e9 / gf:.0%} of it)")


if __name__ == "__main__":
    main()
