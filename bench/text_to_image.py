"""Text to image: native Stable Diffusion 3 and FLUX.1 in mpool vs diffusers'
StableDiffusion3Pipeline and FluxPipeline, one run, one machine.

One random-weight SD3-shaped pipeline is built with diffusers and transformers
(library initialisation) and saved: an MMDiT of --depth blocks, 64-wide heads
(width 64 x depth, as SD3's rule), patch 2, 16 latent channels; SD3's VAE
(128/256/512/512, two layers per block); a CLIP-L-sized text encoder, a smaller
CLIP-G and a 6-layer T5 (the real CLIP-G and T5-XXL would not fit twice in this
machine's memory, and they run once per image, not per step). Both engines
generate the same 256 x 256 image (the same initial latents, checked to agree)
with classifier-free guidance, fp32, on the same torch intra-op threads.

--family flux builds a FLUX.1-dev-shaped pipeline instead: a transformer of
--depth double-stream and 2 x --depth single-stream blocks (FLUX.1's 19 + 38
scaled down), --depth 128-wide heads (FLUX.1's 24), the guidance embedding,
FLUX's 16-channel VAE, the same CLIP-L-sized encoder and 6-layer T5; embedded
guidance 3.5 (one sequence per step), 256 T5 tokens.

Reported, medians of --repeats:

- seconds per image: the whole call, prompt encoding and VAE decode included;
- seconds per step: the MMDiT's share, from the per-step progress times of
  both (diffusers' callback_on_step_end, mpool's ImageProgress.elapsed);
- the compute bound: the transformer's FLOPs per step (image + text tokens
  through every block, two sequences with SD3's guidance) against a torch
  matmul's rate.

    python bench/text_to_image.py [--depth 12] [--steps 8] [--repeats 3] [--size 256]
    python bench/text_to_image.py --family flux [--depth 6] [--steps 8]
    python bench/text_to_image.py --device cuda --size 1024 --depth 24 --dtype bfloat16   # SD3.5-medium-shaped
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, matmul_gflops  # noqa: E402

import mpool  # noqa: E402
from flux_models import flux_pipeline  # noqa: E402
from sd3_models import sd3_pipeline  # noqa: E402

PROMPT = "a photo of a red house on a hill at night"




def build(out: Path, depth: int, dual: bool) -> Any:
    width = 64 * depth
    pipe = sd3_pipeline(
        randomized=False,
        qk_norm=dual,
        clip_l=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    projection_dim=768),
        clip_g=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                    projection_dim=1280, hidden_act="gelu"),
        t5_config=dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=6, num_heads=32,
                       relative_attention_num_buckets=32),
        mmdit=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=depth,
                   attention_head_dim=64, num_attention_heads=depth, joint_attention_dim=2048,
                   caption_projection_dim=width, pooled_projection_dim=768 + 1280, pos_embed_max_size=96,
                   dual_attention_layers=list(range(depth // 2)) if dual else []),
        vae=dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                 block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                 norm_num_groups=32, sample_size=1024),
    )
    pipe.save_pretrained(out)
    return pipe


FLUX_T5_TOKENS = 256


def build_flux(out: Path, depth: int) -> Any:
    heads = depth
    pipe = flux_pipeline(
        dev=True,
        randomized=False,
        transformer=dict(in_channels=64, num_layers=depth, num_single_layers=2 * depth, attention_head_dim=128,
                         num_attention_heads=heads, joint_attention_dim=2048, pooled_projection_dim=768,
                         axes_dims_rope=[16, 56, 56]),
        clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        t5=dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=6, num_heads=32, relative_attention_num_buckets=32),
        vae=dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                 block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                 norm_num_groups=32, sample_size=1024),
    )
    pipe.save_pretrained(out)
    return pipe


def flux_flops(pipe: Any, size: int) -> float:
    """Multiply-adds x 2 of one step: every token through q/k/v/o and the MLP
    (12 w^2 in a double block; q/k/v, the MLP's up and the fused output, 12 w^2,
    in a single block), plus QK^T and AV over the joint sequence."""
    c = pipe.transformer.config
    w = c.num_attention_heads * c.attention_head_dim
    t = (size // 16) ** 2 + FLUX_T5_TOKENS
    return (c.num_layers + c.num_single_layers) * (2 * 12 * w * w * t + 4 * t * t * w)


def mmdit_flops(pipe: Any, size: int, batch: int) -> float:
    """Multiply-adds x 2 of one step: every token through its stream's q/k/v/o
    (4 w^2) and MLP (8 w^2) in every block, plus QK^T and AV over the joint
    sequence; MMDiT-X layers add the image stream's second attention."""
    c = pipe.transformer.config
    w = c.num_attention_heads * c.attention_head_dim
    n = (size // 8 // c.patch_size) ** 2
    m = 77 + 256  # CLIP tokens + T5 tokens
    block = 2 * 12 * w * w * (n + m) + 4 * (n + m) ** 2 * w
    dual = 2 * 4 * w * w * n + 4 * n * n * w
    return batch * (c.num_layers * block + len(c.dual_attention_layers) * dual)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=["sd3", "flux"], default="sd3")
    parser.add_argument("--depth", type=int, default=None,
                        help="sd3: MMDiT blocks (width 64 x depth; default 12); flux: double blocks and heads (default 6)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dual", action="store_true", help="SD3.5-medium's qk-norm and MMDiT-X layers")
    parser.add_argument("--mpool-only", action="store_true", help="skip diffusers (GPU steps/s runs)")
    args = parser.parse_args()
    flux = args.family == "flux"
    if args.depth is None:
        args.depth = 6 if flux else 12
    if flux:
        args.guidance = 3.5 if args.guidance == 5.0 else args.guidance
    dtype = getattr(torch, args.dtype)
    device = args.device
    where = torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()
    print(f"machine: {where}; torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; {args.dtype}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / args.family
        t0 = time.perf_counter()
        pipe = build_flux(path, args.depth) if flux else build(path, args.depth, args.dual)
        params = sum(p.numel() for p in pipe.transformer.parameters())
        shape = f"FLUX transformer {args.depth}+{2 * args.depth} blocks" if flux else f"MMDiT {args.depth} blocks"
        print(f"built and saved in {time.perf_counter() - t0:.0f} s: {shape}, "
              f"{params / 1e6:.0f}M parameters; {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}")
        if device != "cpu" or dtype != torch.float32:
            pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        latents = torch.randn(1, 16, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
        # diffusers' FLUX pipelines take their latents packed 2x2; mpool takes either form.
        theirs = pipe._pack_latents(latents, 1, 16, args.size // 8, args.size // 8) if flux else latents
        kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.size, width=args.size)
        if flux:
            kw["max_sequence_length"] = FLUX_T5_TOKENS

        def diffusers_run() -> tuple[float, list[float], np.ndarray]:
            marks: list[float] = []

            def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
                if device == "cuda":
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())
                return kwargs

            t = time.perf_counter()
            with torch.no_grad():
                image = pipe(PROMPT, latents=theirs.to(device, dtype), output_type="np",
                             callback_on_step_end=on_step, **kw).images[0]
            return time.perf_counter() - t, [b - a for a, b in zip(marks, marks[1:])], image

        pool = mpool.Pool(request_timeout=3600.0)
        pool.register("model", str(path), device=device, dtype=args.dtype, max_replicas=1)
        extra = {"max_sequence_length": FLUX_T5_TOKENS} if flux else {}

        def mpool_run() -> tuple[float, list[float], np.ndarray]:
            t = time.perf_counter()
            stream = pool.generate_image("model", PROMPT, steps=args.steps, guidance_scale=args.guidance,
                                         width=args.size, height=args.size, latents=latents.numpy(),
                                         preview=False, output_type="np", **extra)
            elapsed = [c.elapsed for c in stream]
            image = stream.result()
            return time.perf_counter() - t, [b - a for a, b in zip(elapsed, elapsed[1:])], image

        mpool_run()  # the cold start (loading) is not timed
        if not args.mpool_only:
            diffusers_run()  # warm-up
        rows = []
        for r in range(args.repeats):
            m_total, m_steps, m_image = mpool_run()
            if args.mpool_only:
                rows.append((m_total, statistics.median(m_steps), None, None))
                print(f"repeat {r + 1}: mpool {m_total:.2f} s/image, {statistics.median(m_steps):.3f} s/step")
                continue
            d_total, d_steps, d_image = diffusers_run()
            diff = float(np.max(np.abs(m_image - d_image)))
            rows.append((m_total, statistics.median(m_steps), d_total, statistics.median(d_steps)))
            print(f"repeat {r + 1}: mpool {m_total:.2f} s/image ({statistics.median(m_steps):.3f} s/step), diffusers "
                  f"{d_total:.2f} s/image ({statistics.median(d_steps):.3f} s/step); ratio {m_total / d_total:.2f}; "
                  f"images differ by {diff:.1e} (max abs)")
        pool.close()

    med = [statistics.median(x[i] for x in rows) if rows[0][i] is not None else None for i in range(4)]
    flops = flux_flops(pipe, args.size) if flux else mmdit_flops(pipe, args.size, 2 if args.guidance > 1 else 1)
    peak = matmul_gflops(device, dtype)
    print(f"\nmpool: {med[0]:.2f} s/image, {med[1]:.3f} s/step ({1 / med[1]:.2f} steps/s)")
    if med[2] is not None:
        print(f"diffusers: {med[2]:.2f} s/image, {med[3]:.3f} s/step ({1 / med[3]:.2f} steps/s)")
        per_image = statistics.median(r[0] / r[2] for r in rows)
        per_step = statistics.median(r[1] / r[3] for r in rows)
        print(f"ratio mpool/diffusers (median of the repeats' ratios): {per_image:.2f}x per image, "
              f"{per_step:.2f}x per step (goal <= 0.8x)")
    print(f"bound: {flops / 1e9:.0f} GFLOP per step; torch {args.dtype} matmul {peak:.0f} GFLOP/s -> "
          f"{flops / peak / 1e9:.3f} s/step at best; mpool at {flops / med[1] / 1e9 / peak:.0%} of it")


if __name__ == "__main__":
    main()
