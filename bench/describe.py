"""Describe an image: native LLaVA-1.5 in mpool vs transformers, one run, one machine.

One random-weight LlavaForConditionalGeneration with a CLIP ViT-L/14-336-shaped
vision tower (24 layers, width 1024, 576 patches) under a 12-layer Llama (width
768, 12 heads, intermediate 3072), fp32, is saved with its LlavaProcessor. Both
engines describe the same synthetic image with the same prompt (the model's chat
template), greedy, exactly --new-tokens tokens (EOS ignored), on the same torch
intra-op threads. Reported, medians of --repeats:

- time to first token: the wall time of a one-token call with the image
  (pixels in memory): preprocessing, the vision tower, the projector and the
  prefill of the 576 image positions plus the text;
- decode tokens/s: (n - 1) extra tokens over the extra wall time of an n-token
  call, the same for both engines (a byte-level tokenizer over random weights
  holds text back, so chunk arrival times are not token times);
- a memory-bandwidth bound for decoding: bandwidth from a 256 MiB tensor copy
  divided by the decoder's weight bytes read per token.

    python bench/describe.py [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
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
from machine import cpu_name, memory_bandwidth  # noqa: E402

import mpool  # noqa: E402
from llava_models import CHAT_TEMPLATE, synthetic_image, tokenizer  # noqa: E402

QUERY = "Describe this picture in detail."



def build(out: Path) -> Any:
    import transformers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer()
    text = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=12, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(str(out))
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    proc.save_pretrained(str(out))
    return model, proc



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mpool-bench-describe-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the model is hundreds of MB
    model, proc = build(tmp / "llava")
    image = synthetic_image(7, 480, 640)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUERY}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    n = args.new_tokens
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=proc.tokenizer.pad_token_id, use_cache=True)

    def hf_call(tokens: int) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            inputs = proc(images=[image], text=prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=tokens, **kw)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        assert len(ids) == tokens, len(ids)
        return time.perf_counter() - t0, ids

    with mpool.Pool(cold_start_replicas=1, request_timeout=3600) as pool:
        info = pool.register("llava", str(tmp / "llava"), max_replicas=1)

        def mp_call(tokens: int) -> tuple[float, list[int]]:
            t0 = time.perf_counter()
            ids: list[int] = []
            for chunk in pool.describe("llava", image, QUERY, max_tokens=tokens, temperature=0, ignore_eos=True):
                ids.extend(chunk.token_ids)
            assert len(ids) == tokens, len(ids)
            return time.perf_counter() - t0, ids

        # Both engines are timed the same way: the wall time of a one-token call
        # is the time to first token; the decode rate is the extra tokens over the
        # extra time of an n-token call.
        def run(call: Any) -> tuple[float, float, list[int]]:
            one, _ = call(1)
            full, ids = call(n)
            return one, (n - 1) / max(full - one, 1e-9), ids

        run(mp_call)  # load and warm up
        run(hf_call)
        pairs = [(run(mp_call), run(hf_call)) for _ in range(args.repeats)]
    same = pairs[-1][0][2] == pairs[-1][1][2]
    mp_ttft = statistics.median(p[0][0] for p in pairs)
    hf_ttft = statistics.median(p[1][0] for p in pairs)
    mp_tps = statistics.median(p[0][1] for p in pairs)
    hf_tps = statistics.median(p[1][1] for p in pairs)
    bw = memory_bandwidth()
    decoder_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                        if "language_model" in name and "embed_tokens" not in name)
    decoder_bytes += model.lm_head.weight.numel() * 4
    bound = bw / decoder_bytes
    print(f"machine: {cpu_name()}; torch {torch.__version__}, threads {args.threads}, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"model: random LLaVA-1.5, CLIP ViT-L/14-336-shaped tower + 12-layer Llama 768, fp32; "
          f"{info['memory_mb']:.0f} MB estimated; greedy tokens identical to transformers: {same}")
    print(f"time to first token (image in memory -> first token), median of {args.repeats}:")
    print(f"    transformers: {hf_ttft:6.2f} s   mpool native: {mp_ttft:6.2f} s   "
          f"ratio mpool / transformers {mp_ttft / hf_ttft:.2f}x (goal <= 0.7x); per repeat: "
          + ", ".join(f"{m[0] / h[0]:.2f}x" for m, h in pairs))
    print(f"decode, {n} tokens, median of {args.repeats}:")
    print(f"    transformers: {hf_tps:6.1f} tokens/s   mpool native: {mp_tps:6.1f} tokens/s   "
          f"ratio {mp_tps / hf_tps:.2f}x (goal >= 1.5x); per repeat: " + ", ".join(f"{m[1] / h[1]:.2f}x" for m, h in pairs))
    print(f"bound: {bw / 1e9:.1f} GB/s copy bandwidth / {decoder_bytes / 1e6:.0f} MB of decoder weights per token = "
          f"{bound:.1f} tokens/s; mpool at {mp_tps / bound:.0%}, transformers at {hf_tps / bound:.0%}")


if __name__ == "__main__":
    main()
