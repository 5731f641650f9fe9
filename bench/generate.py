"""Greedy text generation: native mpool decoder vs transformers, one run, one machine.

A random-weight Llama (12 layers, hidden 768, 12 heads, intermediate 3072, vocab
32000, fp32, ~162M parameters) is built with transformers and saved to a temp
directory with a 32000-entry byte-level BPE tokenizer. Both engines then decode
the same prompt ids, batch 1, exactly --new-tokens tokens (EOS ignored), on the
same torch intra-op threads (--threads: torch.set_num_threads for transformers,
the replica's intra_op_threads for mpool). Reported, medians of --repeats:

- time to first token (TTFT): for both engines the wall clock of a whole
  one-token request (transformers: generate(max_new_tokens=1); mpool: a
  max_tokens=1 stream to its end). The first *chunk* of a longer mpool stream
  can come later: a byte-level tokenizer holds back text that is not yet whole
  UTF-8, which random token ids often are;
- decode tokens/s: tokens after the first one / time from the first to the last
  (transformers timed with a streamer, mpool from its chunks);
- a memory-bandwidth bound: bandwidth from a 256 MiB tensor copy divided by the
  weight bytes read per decoded token (every parameter but the input embedding
  table, which is only gathered; the lm_head counts), and each engine's fraction.
  The KV cache (a few % here) is left out of the bound. The copy counts its
  reads and writes; a step only reads, so the same bound from a read-only
  stream (a 256 MiB tensor's sum) is printed as well ("of read").

    python bench/generate.py [--threads N] [--prompt-tokens 128] [--new-tokens 128] [--repeats 5]

--model moe builds a random-weight Qwen3-MoE instead (12 layers, hidden 768,
16 experts of intermediate 768, top-2, normalised top-k, q/k norm, 12 heads /
4 KV heads): every expert is resident, but a decoded token reads only its two
experts per layer, so the bound divides the bandwidth by the *active* weight
bytes per token (everything but the unchosen experts).

    python bench/generate.py --model moe

--concurrent N: N clients stream at once against one model (one replica, its
continuous batch of up to N sequences), each its own prompt (lengths from
--prompt-tokens down in steps of 8), --new-tokens each, greedy. Reported: the
aggregate tokens/s (all tokens / wall clock from the first request to the last
end), TTFT p50/p95 over the clients (to their first token), mpool at batch 1
(one client, the same run) and transformers' static batched generate over the
same N prompts left-padded (aggregate = N x new tokens / its wall clock). The
bounds: a step of N rows reads the weights once and every sequence's KV cache
(at its mean length), so bandwidth allows N x bandwidth / those bytes tokens/s;
compute allows matmul FLOP/s / (2 x active parameters) tokens/s.

    python bench/generate.py --concurrent 8 [--dtype float32|bfloat16|int8]

--shared-prefix P (with --concurrent): every prompt starts with the same P
tokens (a system prompt) before its own; a warm-up request has cached them, as
an earlier request would in service. mpool then runs the N clients twice, with
its prefix cache and without, and reports the hit rate and both TTFTs.

    python bench/generate.py --concurrent 8 --shared-prefix 512
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bench/tokenize.py would shadow the standard library's tokenize module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))

import torch  # noqa: E402
from machine import cpu_name, matmul_gflops, memory_bandwidth, memory_read_bandwidth  # noqa: E402


def _float32_gemm() -> str:
    import mpool

    return mpool.float32_gemm()

VOCAB = 32000
SPECIALS = ["<unk>", "<s>", "</s>"]


def build_tokenizer_json() -> str:
    """A valid byte-level BPE with exactly VOCAB entries: bytes, specials, then merges of existing tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIALS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    rng = random.Random(0)
    # Merge mostly printable ASCII pieces (letters, 'Ġ' = space) so decoded text is readable.
    pieces = [c for c in alphabet if c.isascii() and c.isalpha()] + ["Ġ"]
    merges: list[tuple[str, str]] = []
    while len(vocab) < VOCAB:
        a, b = rng.choice(pieces), rng.choice(pieces)
        if a + b in vocab or len(a + b) > 12:
            continue
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        pieces.append(a + b)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok.to_str()


MOE = dict(num_experts=16, num_experts_per_tok=2, moe_intermediate_size=768)


def build_model(out: Path, kind: str = "llama") -> Any:
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(
        vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=4096,
        rms_norm_eps=1e-6, initializer_range=0.05, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    if kind == "moe":
        config = Qwen3MoeConfig(num_key_value_heads=4, head_dim=64, norm_topk_prob=True, decoder_sparse_step=1,
                                mlp_only_layers=[], **MOE, **common)
        torch.manual_seed(0)
        model = Qwen3MoeForCausalLM(config).to(torch.float32).eval()
        return _save(model, out)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        initializer_range=0.05,  # logits not too flat, so both engines' argmax agree
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    return _save(model, out)


def _save(model: Any, out: Path) -> Any:
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    model.save_pretrained(str(out), safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(build_tokenizer_json()), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out))
    assert len(fast) == VOCAB, len(fast)
    return model




def bytes_per_token(model: Any, int8: bool = False) -> int:
    """Weight bytes a decoded token reads: every parameter but the gathered input
    embedding table; of a mixture-of-experts layer's experts only the chosen ones.
    int8: each linear weight (every 2-D parameter) as one byte per weight plus a
    float32 scale per output row, as register(dtype="int8") stores it."""
    total = 0
    embed = model.get_input_embeddings().weight
    experts = getattr(model.config, "num_experts", None)
    active = model.config.num_experts_per_tok / experts if experts else 1.0
    for name, p in model.named_parameters():  # tied weights appear once: then the table is read by the lm_head
        if p is embed and not model.config.tie_word_embeddings:
            continue
        share = active if ".experts." in name else 1.0
        size = p.numel() + 4 * p.shape[0] if int8 and p.dim() == 2 else p.numel() * p.element_size()
        total += int(size * share)
    return total


class _Clock:  # duck-typed transformers.generation.BaseStreamer
    """A transformers streamer that records when each new token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first put is the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def bench_transformers(model: Any, prompt: list[int], new_tokens: int, repeats: int) -> dict[str, Any]:
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    # eos_token_id=None: exactly new_tokens tokens, EOS picked like any other token.
    # (min_new_tokens would instead mask EOS out of the logits and change the tokens.)
    kw = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, **kw)  # warm-up
        ttft = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=1, **kw)
            ttft.append(time.perf_counter() - t)
        decode, out = [], None
        for _ in range(repeats):
            clock = _Clock()
            out = model.generate(ids, max_new_tokens=new_tokens, streamer=clock, **kw)
            assert len(clock.times) == new_tokens, len(clock.times)
            decode.append((new_tokens - 1) / (clock.times[-1] - clock.times[0]))
    assert out is not None
    tokens = out[0, len(prompt):].tolist()
    assert len(tokens) == new_tokens, len(tokens)
    return {"ttft": statistics.median(ttft), "tps": statistics.median(decode), "tokens": tokens}


def _stat(stats: Any, *names: str) -> Any:
    for n in names:
        if hasattr(stats, n):
            return getattr(stats, n)
    return None


def bench_mpool(model_dir: Path, prompt: list[int], new_tokens: int, repeats: int, dtype: str,
                threads: int, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    import mpool

    pool = mpool.Pool()
    try:
        # No prefix cache: each repeat of the same prompt computes it again (TTFT is the prefill).
        pool.register("llm", str(model_dir), max_replicas=1, dtype=dtype, intra_op_threads=threads,
                      options={"prefix_cache": False, "kv_cache_dtype": kv_cache_dtype})
        params = dict(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        for _ in pool.generate("llm", prompt, **params):  # warm-up: loads the replica
            pass
        ttft, decode, tokens, final = [], [], [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in pool.generate("llm", prompt, **dict(params, max_tokens=1)):
                pass
            ttft.append(time.perf_counter() - t0)
        for _ in range(repeats):
            tokens = []
            t_first = t_last = None
            first_count = 0
            for chunk in pool.generate("llm", prompt, **params):
                now = time.perf_counter()
                if chunk.token_ids:
                    if t_first is None:
                        t_first, first_count = now, len(chunk.token_ids)
                    t_last = now
                    tokens.extend(chunk.token_ids)
                if chunk.finish_reason is not None:
                    final = chunk
            assert t_first is not None and t_last is not None
            decode.append((len(tokens) - first_count) / max(t_last - t_first, 1e-9))
        stats = final.stats if final is not None else None
        reported = {
            "finish_reason": final.finish_reason if final is not None else None,
            "prompt_tokens": _stat(stats, "prompt_tokens"),
            "completion_tokens": _stat(stats, "completion_tokens"),
            "time_to_first_token_s": _stat(stats, "time_to_first_token_s", "time_to_first_token"),
            "tokens_per_second": _stat(stats, "tokens_per_second"),
        }
        return {"ttft": statistics.median(ttft), "tps": statistics.median(decode), "tokens": tokens, "reported": reported}
    finally:
        pool.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench_mpool_concurrent(model_dir: Path, prompts: list[list[int]], warmup: list[int], new_tokens: int, dtype: str,
                           threads: int, prefix_cache: bool = True, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    import threading

    import mpool

    n = len(prompts)
    pool = mpool.Pool()
    try:
        cache = n * (max(len(p) for p in prompts) + new_tokens)
        pool.register("llm", str(model_dir), max_replicas=1, dtype=dtype, intra_op_threads=threads,
                      options={"max_batch": n, "kv_cache_tokens": cache, "prefix_cache": prefix_cache,
                               "kv_cache_dtype": kv_cache_dtype})
        params = dict(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        for _ in pool.generate("llm", warmup, **dict(params, max_tokens=4)):  # loads the replica (and caches a prefix)
            pass
        ttft: list[float] = [0.0] * n
        counts: list[int] = [0] * n
        outputs: list[list[int]] = [[] for _ in range(n)]
        ends: list[float] = [0.0] * n
        start = threading.Barrier(n + 1)
        t0 = 0.0

        def client(i: int) -> None:
            start.wait()
            first = None
            for chunk in pool.generate("llm", prompts[i], timeout=600, **params):
                if chunk.token_ids and first is None:
                    first = time.perf_counter()
                outputs[i].extend(chunk.token_ids)
            ends[i] = time.perf_counter()
            ttft[i] = (first or ends[i]) - t0
            counts[i] = len(outputs[i])

        workers = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        t0 = time.perf_counter()
        start.wait()
        for w in workers:
            w.join()
        wall = max(ends) - t0
        usage = pool.stats()["models"]["llm"]["usage"]
        return {"tps": sum(counts) / wall, "ttft_p50": percentile(ttft, 0.5), "ttft_p95": percentile(ttft, 0.95),
                "tokens": outputs, "hit_rate": usage.get("prefix_cache_hit_rate", 0.0)}
    finally:
        pool.close()


def bench_transformers_batch(model: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, **kw)  # warm-up
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, **kw)
        wall = time.perf_counter() - t
    tokens = [row[width:].tolist() for row in out]
    return {"tps": len(prompts) * new_tokens / wall, "ttft_p50": ttft, "ttft_p95": ttft, "tokens": tokens}


def main_concurrent(args: Any) -> None:
    n = args.concurrent
    rng = random.Random(1)
    shared = [rng.randrange(len(SPECIALS) + 256, VOCAB) for _ in range(args.shared_prefix)]
    lengths = [args.shared_prefix + max(8, args.prompt_tokens - 8 * i) for i in range(n)]
    prompts = [[1] + shared + [rng.randrange(len(SPECIALS) + 256, VOCAB) for _ in range(k - 1 - len(shared))]
               for k in lengths]
    # The warm-up shares only the common prefix (none without --shared-prefix) with the clients' prompts.
    warmup = [1] + shared + [rng.randrange(len(SPECIALS) + 256, VOCAB) for _ in range(16)]
    with tempfile.TemporaryDirectory(prefix="mpool-bench-llama-") as tmp:
        model_dir = Path(tmp) / args.model
        model = build_model(model_dir, args.model)
        int8 = args.dtype == "int8"
        model = model.to(torch.float32 if int8 else getattr(torch, args.dtype))
        weight_bytes = bytes_per_token(model, int8)
        active_params = bytes_per_token(model) / (2 if args.dtype == "bfloat16" else 4)
        kv = args.kv_cache_dtype
        single = bench_mpool(model_dir, prompts[0], args.new_tokens, args.repeats, args.dtype, args.threads, kv)
        batched = bench_mpool_concurrent(model_dir, prompts, warmup, args.new_tokens, args.dtype, args.threads,
                                         kv_cache_dtype=kv)
        unshared = (bench_mpool_concurrent(model_dir, prompts, warmup, args.new_tokens, args.dtype, args.threads,
                                           prefix_cache=False, kv_cache_dtype=kv) if args.shared_prefix else None)
        static = bench_transformers_batch(model, prompts, args.new_tokens)
        bw = memory_bandwidth()
        read_bw = memory_read_bandwidth()
        flops = matmul_gflops(dtype=torch.float32 if int8 else getattr(torch, args.dtype)) * 1e9
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bf16 = args.kv_cache_dtype == "bfloat16" or (args.kv_cache_dtype == "auto" and args.dtype == "bfloat16")
    kv_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * (2 if kv_bf16 else 4)
    mean_positions = statistics.mean(lengths) + args.new_tokens / 2
    step_bytes = weight_bytes + n * mean_positions * kv_position  # the weights once, every sequence's cache
    bw_bound = n * bw / step_bytes
    compute_bound = flops / (2 * active_params)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, threads {args.threads}, mpool's float32 GEMMs: "
          f"{_float32_gemm()}")
    print(f"model: {args.model}, {active_params / 1e6:.0f}M active params, {args.dtype}, mpool's KV cache in "
          f"{'bfloat16' if kv_bf16 else 'float32'}; {n} clients, prompts "
          f"{min(lengths)}-{max(lengths)} tokens, {args.new_tokens} new tokens each, greedy")
    print(f"a step reads the weights ({weight_bytes / 2**20:.0f} MiB) once and each sequence's KV cache "
          f"({n} x {mean_positions:.0f} positions on average, {n * mean_positions * kv_position / 2**20:.0f} MiB)")
    print(f"bounds at {n} rows a step: bandwidth {bw / 1e9:.1f} GB/s -> {bw_bound:.0f} tokens/s "
          f"(read-only stream {read_bw / 1e9:.1f} GB/s -> {n * read_bw / step_bytes:.0f}); "
          f"matmul {flops / 1e9:.0f} GFLOP/s -> {compute_bound:.0f} tokens/s")
    if args.shared_prefix:
        print(f"each prompt starts with the same {args.shared_prefix} tokens after BOS (cached by a warm-up request); "
              f"prefix cache hit rate {batched['hit_rate']:.0%} of prompt tokens")
    print(f"{'engine':34s} {'tokens/s':>9s} {'TTFT p50 ms':>12s} {'TTFT p95 ms':>12s} {'of bound':>9s}")
    bound = min(bw_bound, compute_bound)
    rows = [(f"mpool, {n} concurrent streams", batched)]
    if unshared:
        rows.append((f"mpool, {n} streams, no prefix cache", unshared))
    rows += [("mpool, batch 1", single | {"ttft_p50": single["ttft"], "ttft_p95": single["ttft"]}),
             (f"transformers, static batch of {n}", static)]
    for name, r in rows:
        print(f"{name:34s} {r['tps']:9.1f} {r['ttft_p50'] * 1e3:12.1f} {r['ttft_p95'] * 1e3:12.1f} {r['tps'] / bound:9.0%}")
    print(f"ratios: mpool {n} streams / mpool batch 1 = {batched['tps'] / single['tps']:.2f}x; "
          f"/ transformers static batch = {batched['tps'] / static['tps']:.2f}x")
    if unshared:
        print(f"prefix cache: TTFT p50 {unshared['ttft_p50'] / batched['ttft_p50']:.2f}x lower, p95 "
              f"{unshared['ttft_p95'] / batched['ttft_p95']:.2f}x lower, tokens/s {batched['tps'] / unshared['tps']:.2f}x; "
              f"token ids equal with and without: "
              f"{sum(a == b for a, b in zip(batched['tokens'], unshared['tokens']))} of {n} streams")
    same = sum(a == b for a, b in zip(batched["tokens"], static["tokens"]))
    print(f"token ids equal to transformers' batch: {same} of {n} streams"
          + (" (int8 weights may differ)" if int8 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama", choices=["llama", "moe"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"],
                    help="both engines run in it; int8: mpool's int8 weights against transformers in float32")
    ap.add_argument("--engines", default="transformers,mpool", help="comma-separated subset of transformers,mpool")
    ap.add_argument("--concurrent", type=int, default=0, help="N clients at once (see above); 0: batch 1 only")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="with --concurrent: mpool's option kv_cache_dtype (auto: the model's dtype)")
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="with --concurrent: every prompt starts with the same P tokens; mpool runs with and "
                         "without its prefix cache")
    args = ap.parse_args()
    if args.concurrent > 0:
        torch.set_num_threads(args.threads)
        main_concurrent(args)
        return
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}
    torch.set_num_threads(args.threads)

    rng = random.Random(1)
    prompt = [1] + [rng.randrange(len(SPECIALS) + 256, VOCAB) for _ in range(args.prompt_tokens - 1)]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mpool-bench-llama-") as tmp:
        model_dir = Path(tmp) / args.model
        model = build_model(model_dir, args.model)
        int8 = args.dtype == "int8"
        torch_dtype = torch.float32 if int8 else getattr(torch, args.dtype)
        model = model.to(torch_dtype)  # saved in float32; each engine converts at load
        weight_bytes = bytes_per_token(model, int8)
        float_bytes = bytes_per_token(model) if int8 else weight_bytes
        n_params = sum(p.numel() for p in model.parameters())
        if "mpool" in engines:
            results["mpool"] = bench_mpool(model_dir, prompt, args.new_tokens, args.repeats, args.dtype, args.threads)
        if "transformers" in engines:
            results["transformers"] = bench_transformers(model, prompt, args.new_tokens, args.repeats)
        bw = memory_bandwidth()
        read_bw = memory_read_bandwidth()

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * (2 if args.dtype == "bfloat16" else 4)
    # (int8 keeps the KV cache in float32)
    bound = bw / weight_bytes
    float_bound = bw / float_bytes
    print(f"machine: {cpu_name()}, torch {torch.__version__}, threads {args.threads}, mpool's float32 GEMMs: "
          f"{_float32_gemm()}")
    shape = (f"Qwen3-MoE {cfg.num_experts} experts, top-{cfg.num_experts_per_tok}" if args.model == "moe" else "Llama")
    print(f"model: {shape}, {n_params / 1e6:.0f}M params {args.dtype}; prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, batch 1, greedy, median of {args.repeats}")
    print(f"memory bandwidth (256 MiB copy): {bw / 1e9:.1f} GB/s; active weight bytes per token {weight_bytes / 2**20:.0f} MiB "
          f"(+ KV cache {kv_bytes * (args.prompt_tokens + args.new_tokens // 2) / 2**20:.1f} MiB on average, not counted)")
    print(f"bandwidth bound: {bound:.1f} tokens/s" + (f" in int8, {float_bound:.1f} in float32" if int8 else ""))
    print(f"read-only stream (256 MiB sum): {read_bw / 1e9:.1f} GB/s -> {read_bw / weight_bytes:.1f} tokens/s "
          f"(the 'of read' column)")
    print(f"{'engine':14s} {'TTFT ms':>9s} {'decode tok/s':>13s} {'of bound':>9s} {'of read':>8s}")
    for name, r in results.items():
        own = float_bytes if name == "transformers" else weight_bytes  # transformers runs float32 under --dtype int8
        print(f"{name:14s} {r['ttft'] * 1e3:9.1f} {r['tps']:13.2f} {r['tps'] * own / bw:9.0%} "
              f"{r['tps'] * own / read_bw:8.0%}")
    if "mpool" in results:
        print(f"mpool reported (last run): {results['mpool']['reported']}")
    if len(results) == 2:
        mp, tf = results["mpool"], results["transformers"]
        print(f"ratio mpool / transformers: decode {mp['tps'] / tf['tps']:.2f}x, "
              f"TTFT {mp['ttft'] / tf['ttft']:.2f}x (lower is better)")
        if mp["tokens"] != tf["tokens"]:
            first = next((i for i, (a, b) in enumerate(zip(mp["tokens"], tf["tokens"])) if a != b), None)
            label = "token ids differ, as int8 weights may" if int8 else "WARNING: token ids differ"
            print(f"{label} (mpool {len(mp['tokens'])}, transformers {len(tf['tokens'])} tokens; "
                  f"first difference at {first})")
        else:
            print(f"token ids: identical ({len(tf['tokens'])} tokens)")


if __name__ == "__main__":
    main()
