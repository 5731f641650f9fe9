"""The HTTP server (mpool.server), started on loopback by each test and driven with
the official ``openai`` client and raw HTTP (httpx).

Text generation runs a tiny random Llama saved by decoder_models (its chat
template renders the prompts); embeddings run the bundled all-MiniLM-L6-v2; the
other capabilities, and the models whose timing a test controls, are the
Python-defined models of server_models.py. Every wait is bounded by an event or a
generous deadline, never by a speed assumption.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

import mpool
import server_models
from decoder_models import SPECIAL_TOKENS, build_decoder
from mpool.server import ServerConfig, create_app
from mpool.server.config import Limits, ModelEntry, config_from_dict, load_config

HERE = Path(__file__).resolve().parent
MINILM = mpool.default_embedding_model_path()


@contextlib.contextmanager
def running(app):
    """Serves ``app`` on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def wait_ready(base: str, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/ready", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "preloads did not finish"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_decoder(tmp_path_factory.mktemp("server-llama"), "llama")


def config(*models: ModelEntry, **kw) -> ServerConfig:
    cfg = ServerConfig(models=list(models), **kw)
    cfg.pool.setdefault("request_timeout", 60.0)
    return cfg


def py(key: str, factory: str, **kw) -> ModelEntry:
    return ModelEntry(key=key, python=f"server_models:{factory}", **kw)


@pytest.fixture(scope="module")
def server(llama_dir):
    """One server with every capability, shared by the tests that only read."""
    cfg = config(
        ModelEntry(key="minilm", path=MINILM, preload=True),
        ModelEntry(key="llama", path=str(llama_dir), preload=True),
        py("words", "streamer"),
        py("ranker", "scorer"),
        py("painter", "painter"),
        py("hash", "embedder"),
    )
    with running(create_app(cfg)) as base:
        wait_ready(base)
        yield base


@pytest.fixture
def client(server):
    # Closed after the test: its pooled connections would otherwise be left to the
    # garbage collector, whose ResourceWarning (an error here) lands wherever it runs.
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as c:
        yield c


# --- OpenAI shapes ------------------------------------------------------------------


def test_embeddings_float_and_base64_equal_the_pools_vectors_with_token_usage(server, client):
    texts = ["a sentence to embed", "and another, somewhat longer one"]
    with mpool.Pool() as pool:
        pool.register("m", MINILM)
        expected = pool.embed("m", texts)
        expected_small = pool.embed("m", texts, dimensions=64)
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    b64 = client.embeddings.create(model="minilm", input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in floats.data] == [0, 1]
    np.testing.assert_allclose(np.array([d.embedding for d in floats.data]), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array([d.embedding for d in b64.data]), expected, rtol=0, atol=0)
    small = client.embeddings.create(model="minilm", input=texts, dimensions=64, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in small.data]), expected_small, atol=1e-6)
    tok = mpool.tokenizer.Tokenizer.from_pretrained(MINILM)
    tok.no_padding()
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    assert tokens < 2 * 128  # real tokens, not MiniLM's padded length
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    many = [f"sentence number {i} of a bulk request" for i in range(200)]  # 76,800 floats: encoded off the loop
    bulk = client.embeddings.create(model="minilm", input=many, encoding_format="float")
    with mpool.Pool() as pool:
        pool.register("m", MINILM)
        np.testing.assert_allclose(np.array([d.embedding for d in bulk.data]), pool.embed("m", many), atol=1e-5)
    raw = httpx.post(f"{server}/v1/embeddings", json={"model": "minilm", "input": "x", "encoding_format": "base64"}).json()
    assert np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4").shape == (384,)


def test_chat_completion_equals_the_pools_chat_and_reports_usage(server, client, llama_dir):
    messages = [{"role": "user", "content": "Tell me about the quick brown fox"}]
    with mpool.Pool() as pool:
        pool.register("m", str(llama_dir))
        stream = pool.chat("m", messages, max_tokens=12, ignore_eos=True)
        expected = stream.text()
        stats = stream.stats
    out = client.chat.completions.create(model="llama", messages=messages, max_tokens=12, extra_body={"ignore_eos": True})
    assert out.object == "chat.completion" and out.model == "llama"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (stats.prompt_tokens, stats.completion_tokens)
    assert out.usage.total_tokens == stats.prompt_tokens + stats.completion_tokens
    # max_completion_tokens is the newer name of the same limit
    newer = client.chat.completions.create(
        model="llama", messages=messages, max_completion_tokens=12, extra_body={"ignore_eos": True}
    )
    assert newer.choices[0].message.content == expected


def test_chat_stream_gives_the_same_text_and_usage_in_a_last_chunk_when_asked(server, client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Count: one two three"}]
    whole = client.chat.completions.create(model="llama", messages=messages, max_tokens=16, extra_body={"ignore_eos": True})
    chunks = list(
        client.chat.completions.create(
            model="llama", messages=messages, max_tokens=16, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    no_usage = list(client.chat.completions.create(model="llama", messages=messages, max_tokens=4, stream=True))
    assert all(c.usage is None for c in no_usage)


def test_chat_logprobs_give_each_tokens_logprob_and_the_top_alternatives(server, client):
    out = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hello"}], max_tokens=6, logprobs=True, top_logprobs=20,
        extra_body={"ignore_eos": True},
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 6
    partial = 0
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 20
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the chosen one is the best
        # Each token's own bytes (the test tokenizer has a token per byte: some hold part of a
        # character, which OpenAI writes as bytes:\x..), each alternative its own.
        for item in (entry, *entry.top_logprobs):
            assert item.token == _openai_token(bytes(item.bytes))
            partial += item.token.startswith("bytes:")
        assert len({bytes(t.bytes) for t in entry.top_logprobs}) == 20
    assert partial > 0
    without = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hello"}], max_tokens=3)
    assert without.choices[0].logprobs is None


def _openai_token(raw: bytes) -> str:
    """OpenAI's token string: its text, or bytes:\\x.. for part of a character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def test_completions_stop_and_seed_and_streaming_match(server, client):
    base = client.completions.create(model="llama", prompt="Once upon a time", max_tokens=10, extra_body={"ignore_eos": True})
    text = base.choices[0].text
    assert base.object == "text_completion" and base.usage.completion_tokens == 10
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model="llama", prompt="Once upon a time", max_tokens=10, stream=True, extra_body={"ignore_eos": True}
        ) if c.choices
    )
    assert streamed == text
    cut = text.strip()[:3]
    if cut:
        stopped = client.completions.create(model="llama", prompt="Once upon a time", max_tokens=10, stop=[cut])
        assert cut not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(model="llama", prompt="Once", max_tokens=8, temperature=1.0, seed=7,
                                  extra_body={"ignore_eos": True}).choices[0].text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    lp = client.completions.create(model="llama", prompt="Once", max_tokens=4, logprobs=2, extra_body={"ignore_eos": True})
    legacy = lp.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4
    assert all(len(t) <= 2 for t in legacy.top_logprobs) and legacy.text_offset[0] == 0


def test_logprob_offsets_and_bytes_agree_with_the_text_when_tokens_split_characters(server, client):
    # Near-uniform draws from the tiny byte-level model: tokens split characters and
    # special tokens come up. text_offset must be where each token starts in the text
    # (streamed or not), and the chosen tokens' bytes must join into the content.
    split = 0
    for seed in range(6):
        kw = dict(model="llama", prompt="Once", max_tokens=16, temperature=30.0, seed=seed, logprobs=1,
                  extra_body={"ignore_eos": True})
        whole = client.completions.create(**kw).choices[0]
        offsets = []
        with client.completions.create(stream=True, **kw) as events:
            for c in events:
                if c.choices and c.choices[0].logprobs:
                    offsets += c.choices[0].logprobs.text_offset
        assert whole.logprobs.text_offset == offsets, seed
        assert offsets == sorted(offsets) and offsets[-1] <= len(whole.text)
        split += any(t.startswith("bytes:") for t in whole.logprobs.tokens)
        chat = client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "Once"}], max_tokens=16, temperature=30.0, seed=seed,
            logprobs=True, extra_body={"ignore_eos": True})
        # Special tokens aside (their bytes are their names; the content leaves them out).
        special = set(SPECIAL_TOKENS)
        joined = b"".join(bytes(t.bytes) for t in chat.choices[0].logprobs.content if t.token not in special)
        assert joined.decode("utf-8", "replace") == chat.choices[0].message.content, seed
    assert split >= 1  # the case this test is about came up


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_image_generation_and_edit_return_b64_images(server, client):
    out = client.images.generate(model="painter", prompt="a fox", size="16x8", n=2, extra_body={"seed": 3})
    first, second = (_png(d.b64_json) for d in out.data)
    assert first.size == second.size == (16, 8)
    with mpool.Pool() as pool:
        pool.register("p", server_models.painter())
        expected = [np.asarray(pool.generate_image("p", "a fox", width=16, height=8, seed=s).result()) for s in (3, 4)]
    assert np.array_equal(np.asarray(first), expected[0]) and np.array_equal(np.asarray(second), expected[1])
    init = Image.new("RGB", (16, 8), (200, 100, 50))
    buf = io.BytesIO()
    init.save(buf, format="PNG")
    edited = client.images.edit(model="painter", image=("init.png", buf.getvalue(), "image/png"), prompt="a fox",
                                size="16x8", extra_body={"seed": 3})
    pixels = np.asarray(_png(edited.data[0].b64_json)).astype(int)
    assert np.abs(pixels - (expected[0].astype(int) + np.array([200, 100, 50])) // 2).max() <= 1
    as_json = httpx.post(
        f"{server}/v1/images/edits",
        json={"model": "painter", "prompt": "a fox", "size": "16x8", "seed": 3,
              "image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
    )
    assert as_json.status_code == 200
    assert np.array_equal(np.asarray(_png(as_json.json()["data"][0]["b64_json"])), np.asarray(_png(edited.data[0].b64_json)))


def test_rerank_answers_in_infinity_and_tei_shapes(server):
    docs = ["the cat sat", "a dog ran far away", "cat and dog"]
    r = httpx.post(f"{server}/v1/rerank", json={"model": "ranker", "query": "cat", "documents": docs,
                                               "return_documents": True, "top_n": 2}).json()
    assert [x["index"] for x in r["results"]] == [0, 2]
    assert r["results"][0]["document"] == "the cat sat"
    assert r["results"][0]["relevance_score"] == pytest.approx(1 / 3)
    tei = httpx.post(f"{server}/rerank", json={"query": "cat", "texts": docs, "return_text": True}).json()
    assert [x["index"] for x in tei] == [0, 2, 1] and tei[0]["text"] == "the cat sat"
    assert tei[1]["score"] == pytest.approx(1 / 3)


def test_models_lists_every_served_model_with_its_capabilities(server, client):
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"minilm", "llama", "words", "ranker", "painter", "hash"}
    assert client.models.retrieve("llama").id == "llama"
    assert "text_to_text" in httpx.get(f"{server}/v1/models/llama").json()["capabilities"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


# --- Ollama shapes ------------------------------------------------------------------


def test_ollama_chat_streams_ndjson_equal_to_the_non_streamed_answer(server):
    body = {"model": "llama", "messages": [{"role": "user", "content": "hi there"}],
            "options": {"num_predict": 8, "temperature": 0}}
    whole = httpx.post(f"{server}/api/chat", json={**body, "stream": False}).json()
    assert whole["done"] and whole["eval_count"] <= 8 and whole["prompt_eval_count"] > 0
    with httpx.stream("POST", f"{server}/api/chat", json=body) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"]
    assert "".join(x["message"]["content"] for x in lines) == whole["message"]["content"]
    assert lines[-1]["done_reason"] == whole["done_reason"]


def test_ollama_generate_uses_the_chat_template_unless_raw(server, llama_dir):
    with mpool.Pool() as pool:
        pool.register("m", str(llama_dir))
        templated = pool.chat("m", [{"role": "user", "content": "hello"}], max_tokens=6, ignore_eos=True).text()
        raw = pool.generate("m", "hello", max_tokens=6, ignore_eos=True).text()
    opts = {"num_predict": 6}
    got = httpx.post(f"{server}/api/generate", json={"model": "llama", "prompt": "hello", "stream": False,
                                                    "options": opts}).json()
    assert got["response"] == templated or got["done_reason"] == "stop"
    got_raw = httpx.post(f"{server}/api/generate", json={"model": "llama", "prompt": "hello", "raw": True,
                                                        "stream": False, "options": opts}).json()
    assert got_raw["response"] == raw or got_raw["done_reason"] == "stop"


def test_ollama_embed_tags_and_ps(server):
    e = httpx.post(f"{server}/api/embed", json={"model": "hash", "input": ["a", "b"]}).json()
    expected = server_models.HashEmbedder().embed(["a", "b"])
    np.testing.assert_allclose(np.array(e["embeddings"]), expected, atol=1e-6)
    old = httpx.post(f"{server}/api/embeddings", json={"model": "hash", "prompt": "a"}).json()
    np.testing.assert_allclose(old["embedding"], expected[0], atol=1e-6)
    tags = {m["name"]: m for m in httpx.get(f"{server}/api/tags").json()["models"]}
    assert set(tags) == {"minilm", "llama", "words", "ranker", "painter", "hash"}
    assert tags["minilm"]["details"]["family"] == "bert" and tags["minilm"]["size"] > 0
    shown = httpx.post(f"{server}/api/show", json={"model": "llama"}).json()
    assert shown["capabilities"] == ["completion", "embedding"] and "add_generation_prompt" in shown["template"]
    assert httpx.post(f"{server}/api/show", json={"model": "hash"}).json()["capabilities"] == ["embedding"]
    assert httpx.post(f"{server}/api/show", json={"model": "nope"}).status_code == 404
    ps = {m["name"]: m for m in httpx.get(f"{server}/api/ps").json()["models"]}
    assert "hash" in ps and ps["minilm"]["expires_at"].startswith("0001")  # preloaded: never expires


def test_ollama_keep_alive_sets_the_models_keep_alive_and_zero_unloads_it():
    with mpool.Pool() as pool:
        cfg = config(py("words", "streamer"))
        with running(create_app(cfg, pool=pool)) as base:
            r = httpx.post(f"{base}/api/generate", json={"model": "words", "keep_alive": "10m", "stream": False,
                                                        "prompt": "a b"})
            assert r.status_code == 200, r.text
            assert r.json()["response"] == "a b "  # no chat template: the prompt as it is
            assert {m["key"]: m for m in pool.models()}["words"]["keep_alive"] == 600
            unload = httpx.post(f"{base}/api/generate", json={"model": "words", "keep_alive": 0}).json()
            assert unload["done_reason"] == "unload"
            assert {m["key"]: m for m in pool.models()}["words"]["state"] == "unloaded"
            load = httpx.post(f"{base}/api/chat", json={"model": "words", "messages": []}).json()
            assert load["done_reason"] == "load"
            words = {m["key"]: m for m in pool.models()}["words"]
            assert words["keep_alive"] == 300 and words["state"] == "ready"  # no keep_alive: the registered one
            bad = httpx.post(f"{base}/api/chat", json={"model": "words", "keep_alive": "soon", "messages": []})
            assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


# --- errors ----------------------------------------------------------------------------


class Gate:
    """A text model that waits for `release` before streaming; `entered` tells it started."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def generate(self, prompt, params):
        self.entered.set()
        self.release.wait(60)
        yield "done"


class Broken:
    def generate(self, prompt, params):
        raise RuntimeError("the model broke on purpose")
        yield ""


def test_every_pool_error_maps_to_its_http_status_in_the_openai_error_shape():
    gate = Gate()
    with mpool.Pool(max_queue=1, memory_budget_mb={"cpu": 100}, request_timeout=60) as pool:
        pool.register("gated", mpool.PyModel("text_to_text", lambda d: gate, memory_mb=1, max_replicas=1))
        pool.register("broken", mpool.PyModel("text_to_text", lambda d: Broken(), memory_mb=1))
        pool.register("huge", mpool.PyModel("text_to_text", lambda d: Broken(), memory_mb=1000))
        with running(create_app(ServerConfig(), pool=pool)) as base:
            def chat(model, **kw):  # a completion: Python-defined models have no chat template
                return httpx.post(f"{base}/v1/completions", timeout=60, json={"model": model, "prompt": "x", **kw})

            check_error(chat("gated", temperature="hot"), 400, "invalid_input")
            check_error(chat("nope"), 404, "model_not_found")
            check_error(chat("broken"), 500, "model_error")
            check_error(chat("huge"), 503, "memory_exhausted")
            # Overloaded: one request runs (entered), one waits in the queue, the next is refused.
            with ThreadPoolExecutor(2) as ex:
                running_one = ex.submit(chat, "gated")
                assert gate.entered.wait(60)
                queued = ex.submit(chat, "gated")
                deadline = time.monotonic() + 60
                while pool.stats()["models"]["gated"]["queued"] < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                refused = chat("gated")
                check_error(refused, 429, "overloaded")
                assert refused.headers["retry-after"] == "1"
                gate.release.set()
                assert running_one.result().status_code == queued.result().status_code == 200
            pool.close()
            check_error(chat("gated"), 503, "shutting_down")
            ollama = httpx.post(f"{base}/api/chat", json={"model": "nope", "messages": []})
            assert ollama.status_code == 404 and "nope" in ollama.json()["error"]


def test_an_unknown_route_is_404_and_a_wrong_method_is_405_with_allow_in_each_api_s_shape(server):
    check_error(httpx.post(f"{server}/v1/nothing", json={}), 404, "unknown_route")
    assert httpx.get(f"{server}/api/nothing").status_code == 404
    wrong = httpx.get(f"{server}/v1/embeddings")
    check_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST" and "GET is not served at /v1/embeddings" in wrong.json()["error"]["message"]
    ollama = httpx.delete(f"{server}/api/tags")
    assert ollama.status_code == 405 and set(ollama.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "DELETE is not served at /api/tags" in ollama.json()["error"]
    assert httpx.get(f"{server}/api/tags").status_code == 200


def test_bodies_too_deep_to_parse_and_lone_surrogates_in_messages_are_400s_in_each_api_s_shape(server):
    deep = "[" * 100_000 + "]" * 100_000
    for route, shape in (("/v1/embeddings", "openai"), ("/api/embed", "ollama")):
        r = httpx.post(f"{server}{route}", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"] if shape == "openai" else r.json()["error"]
        assert "too deeply" in message
    # The key of an unknown option is quoted back: a lone surrogate stays an escape in the reply.
    body = '{"model": "words", "prompt": "a b", "stream": false, "options": {"\\ud800": 1}}'
    r = httpx.post(f"{server}/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "unknown option" in r.json()["error"], r.text
    assert httpx.post(f"{server}/api/generate", json={"model": "words", "prompt": "a b", "stream": False}).json()[
        "response"
    ] == "a b "


def test_a_refused_request_starts_no_job_and_leaves_the_models_keep_alive_and_state_as_they_were():
    with mpool.Pool() as pool:
        with running(create_app(config(py("words", "streamer"), py("hash", "embedder")), pool=pool)) as base:
            pool.load("words")
            pool.load("hash")
            before = pool.stats()["models"]["words"]["counts"]["requests"]
            for route, body in (
                ("/api/generate", {"model": "words", "prompt": "a b", "keep_alive": 0, "options": {"bogus": 1}}),
                ("/api/generate", {"model": "words", "prompt": "a b", "keep_alive": 0, "options": {"temperature": "hot"}}),
                ("/api/chat", {"model": "words", "keep_alive": "3h", "messages": [{"role": "user", "content": "a"}],
                               "options": {"top_p": 5}}),
                ("/api/generate", {"model": "words", "prompt": "a b", "keep_alive": "99999999h"}),
                ("/api/generate", {"model": "words", "prompt": "a b", "keep_alive": 0, "stream": "yes"}),
                ("/api/chat", {"model": "words", "keep_alive": 0, "messages": [{"role": 5}]}),
                ("/api/embed", {"model": "hash", "keep_alive": 0, "input": [3]}),
                ("/api/embeddings", {"model": "hash", "keep_alive": 0, "prompt": 3}),
                ("/v1/completions", {"model": "words", "prompt": "a b", "stream": "yes"}),
                ("/v1/completions", {"model": "words", "prompt": "a b", "stream": True, "stream_options": 3}),
            ):
                r = httpx.post(f"{base}{route}", json=body)
                assert r.status_code == 400, (route, r.text)
            models = {m["key"]: m for m in pool.models()}
            assert models["words"]["state"] == models["hash"]["state"] == "ready"
            assert models["words"]["keep_alive"] == models["hash"]["keep_alive"] == 300
            assert pool.stats()["models"]["words"]["counts"]["requests"] == before  # a refused request starts no job


def test_ollama_option_errors_name_the_option_and_a_keep_alive_past_the_longest_duration_is_400(server):
    r = httpx.post(f"{server}/api/generate", json={"model": "words", "prompt": "a", "options": {"repeat_penalty": -1}})
    assert r.status_code == 400 and "options.repeat_penalty" in r.json()["error"], r.text
    r = httpx.post(f"{server}/api/generate", json={"model": "words", "prompt": "a", "keep_alive": 1e12, "stream": False})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"], r.text
    # The longest keep-alive accepted still lists in /api/ps (its expiry was past datetime's range).
    r = httpx.post(f"{server}/api/generate", json={"model": "words", "prompt": "a", "keep_alive": "2562047h",
                                                  "stream": False})
    assert r.status_code == 200, r.text
    r = httpx.get(f"{server}/api/ps")
    assert r.status_code == 200 and any(m["name"] == "words" for m in r.json()["models"]), r.text
    httpx.post(f"{server}/api/generate", json={"model": "words", "prompt": "a", "stream": False})  # back to default


@pytest.mark.parametrize("size", ["\u00b2x\u00b2", "\u0668x\u0668", "８x８"])
def test_an_image_size_in_other_digits_than_ascii_is_a_400(server, size):
    r = httpx.post(f"{server}/v1/images/generations", json={"model": "painter", "prompt": "x", "size": size})
    check_error(r, 400, "invalid_input")


def test_a_model_that_returns_nan_embeddings_is_a_500_model_error_in_each_api_s_shape():
    with running(create_app(config(py("nan", "not_a_number")))) as base:
        for encoding in ("float", "base64"):
            r = httpx.post(f"{base}/v1/embeddings", json={"model": "nan", "input": ["ok", "nan"], "encoding_format": encoding})
            check_error(r, 500, "model_error")
            assert "embedding 1" in r.json()["error"]["message"]
        for route, body in (("/api/embed", {"model": "nan", "input": ["nan"]}),
                            ("/api/embeddings", {"model": "nan", "prompt": "nan"})):
            r = httpx.post(f"{base}{route}", json=body)
            assert r.status_code == 500 and "non-finite" in r.json()["error"], r.text
        r = httpx.post(f"{base}/v1/embeddings", json={"model": "nan", "input": ["ok"]})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [1.0, 0.0]


def test_a_streamed_request_the_model_refuses_is_a_400_before_any_event_in_each_api(server):
    # The prompt is longer than the context: only the loaded model can tell. A
    # streamed request used to answer 200 and then an error event.
    long = "the quick brown fox jumps over the lazy dog " * 400
    r = httpx.post(f"{server}/v1/chat/completions", json={
        "model": "llama", "stream": True, "messages": [{"role": "user", "content": long}]})
    check_error(r, 400, "invalid_input")
    assert "context" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/completions", json={"model": "llama", "stream": True, "prompt": long})
    check_error(r, 400, "invalid_input")
    for route, body in (("/api/chat", {"model": "llama", "messages": [{"role": "user", "content": long}]}),
                        ("/api/generate", {"model": "llama", "prompt": long})):
        r = httpx.post(f"{server}{route}", json=body)
        assert r.status_code == 400 and "context" in r.json()["error"], r.text
    # A stream the model takes still streams.
    r = httpx.post(f"{server}/v1/completions", json={"model": "llama", "stream": True, "prompt": "a b", "max_tokens": 3})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def test_ollama_names_with_the_latest_tag_and_the_older_function_fields_and_a_non_string_model(server):
    r = httpx.post(f"{server}/api/generate", json={"model": "words:latest", "prompt": "a b", "stream": False})
    assert r.status_code == 200 and r.json()["response"] == "a b ", r.text
    r = httpx.post(f"{server}/api/show", json={"model": "words:latest"})
    assert r.status_code == 200, r.text
    chat = {"model": "words", "messages": [{"role": "user", "content": "a"}]}
    for field, value in (("functions", [{"name": "f", "parameters": {}}]), ("function_call", "auto")):
        r = httpx.post(f"{server}/v1/chat/completions", json={**chat, field: value})
        check_error(r, 400, "invalid_input")
        assert field in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={**chat, "model": 5})
    check_error(r, 400, "invalid_input")
    assert "model must be a string" in r.json()["error"]["message"]


def test_openai_s_own_bounds_stream_options_needs_stream_and_penalties_stay_within_two(server):
    chat = {"model": "words", "messages": [{"role": "user", "content": "a"}]}
    for extra, named in (({"stream_options": {"include_usage": True}}, "stream_options"),
                         ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -2.5}, "frequency_penalty")):
        for route, body in (("/v1/chat/completions", chat), ("/v1/completions", {"model": "words", "prompt": "a"})):
            r = httpx.post(f"{server}{route}", json={**body, **extra})
            check_error(r, 400, "invalid_input")
            assert named in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/completions", json={"model": "words", "prompt": "a", "presence_penalty": 2,
                                                     "frequency_penalty": -2})
    assert r.status_code == 200, r.text


def check_error(r, status, code):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_a_request_past_the_pools_timeout_is_504():
    gate = Gate()
    with mpool.Pool(request_timeout=0.3) as pool:
        pool.register("gated", mpool.PyModel("text_to_text", lambda d: gate, memory_mb=1, max_replicas=1))
        with running(create_app(ServerConfig(), pool=pool)) as base:
            r = httpx.post(f"{base}/v1/completions", timeout=60, json={"model": "gated", "prompt": "x"})
            gate.release.set()
            check_error(r, 504, "timeout")


def _raw_post(port: int, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return sock


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole-answer"])
def test_a_client_that_disconnects_cancels_its_job_and_frees_the_replica(stream):
    with mpool.Pool(request_timeout=120) as pool:
        with running(create_app(config(py("endless", "endless")), pool=pool)) as base:
            server_models.Endless.started.clear()
            server_models.Endless.closed.clear()
            port = int(base.rsplit(":", 1)[1])
            sock = _raw_post(port, "/v1/completions", {"model": "endless", "prompt": "go", "stream": stream})
            assert server_models.Endless.started.wait(60)
            if stream:
                seen = b""
                while b"data:" not in seen:  # the stream is flowing
                    chunk = sock.recv(65536)
                    assert chunk, "the server closed the stream"
                    seen += chunk
            sock.close()
            assert server_models.Endless.closed.wait(60), "the generation was not cancelled"
            deadline = time.monotonic() + 60
            while pool.stats()["models"]["endless"]["busy_replicas"]:
                assert time.monotonic() < deadline, "the replica stayed busy"
                time.sleep(0.01)
            assert pool.stats()["models"]["endless"]["counts"]["cancellations"] == 1
            # max_replicas=1: the next request runs on the freed replica
            server_models.Endless.closed.clear()
            with httpx.stream("POST", f"{base}/v1/completions", timeout=60,
                              json={"model": "endless", "stream": True, "prompt": "again"}) as r:
                assert next(r.iter_lines()).startswith("data:")
            assert server_models.Endless.closed.wait(60)


# --- concurrency, security, operations ---------------------------------------------------


def test_64_concurrent_streaming_clients_each_get_their_solo_text(server, client):
    prompts = [f"Story number {i}: the fox" for i in range(64)]

    def run(prompt):
        chunks = client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": prompt}], max_tokens=12, stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    solo = [run(p) for p in prompts[:8]]
    with ThreadPoolExecutor(64) as ex:
        together = list(ex.map(run, prompts))
    assert together[:8] == solo
    with mpool.Pool() as pool:  # every one equals the pool's own answer
        pool.register("m", str(server_models_path_of(server)))
        for p, text in zip(prompts[8:], together[8:]):
            assert text == pool.chat("m", [{"role": "user", "content": p}], max_tokens=12, ignore_eos=True).text()


def server_models_path_of(server):
    return _LLAMA_DIRS[0]


_LLAMA_DIRS: list = []


@pytest.fixture(autouse=True, scope="module")
def _remember_llama(llama_dir):
    _LLAMA_DIRS[:] = [llama_dir]


def test_api_keys_are_required_except_on_probes_and_compared_exactly():
    cfg = config(py("hash", "embedder"), api_keys=["key-one", "key-two"])
    with running(create_app(cfg)) as base:
        body = {"model": "hash", "input": "x"}
        assert httpx.post(f"{base}/v1/embeddings", json=body).status_code == 401
        wrong = httpx.post(f"{base}/v1/embeddings", json=body, headers={"Authorization": "Bearer key-on"})
        check_error(wrong, 401, "invalid_api_key")
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{base}/api/embed", json=body, headers={"Authorization": "Basic key-one"}).status_code == 401
        for key in ("key-one", "key-two"):
            ok = httpx.post(f"{base}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/ready").status_code == 200
        assert httpx.get(f"{base}/metrics").status_code == 401
        with openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0) as refused:
            with pytest.raises(openai.AuthenticationError):
                refused.models.list()
        with openai.OpenAI(base_url=f"{base}/v1", api_key="key-two", max_retries=0) as accepted:
            assert len(accepted.models.list().data) == 1


def test_limits_refuse_large_bodies_batches_token_counts_and_image_sizes():
    limits = Limits(max_body_mb=0.01, max_tokens=8, max_batch=3, max_image_side=32, max_images=2)
    cfg = config(py("hash", "embedder"), py("words", "streamer"), py("painter", "painter"), limits=limits)
    with running(create_app(cfg)) as base:
        big = {"model": "hash", "input": "x" * 20_000}
        check_error(httpx.post(f"{base}/v1/embeddings", json=big), 413, "request_too_large")

        def chunked():  # no Content-Length: the cap counts the bytes as they arrive
            yield json.dumps(big).encode()

        check_error(httpx.post(f"{base}/v1/embeddings", content=chunked()), 413, "request_too_large")
        batch = httpx.post(f"{base}/v1/embeddings", json={"model": "hash", "input": ["a", "b", "c", "d"]})
        check_error(batch, 400, "invalid_input")
        assert "at most 3" in batch.json()["error"]["message"]
        tokens = httpx.post(f"{base}/v1/completions", json={"model": "words", "prompt": "a", "max_tokens": 9})
        check_error(tokens, 400, "invalid_input")
        assert "max_tokens=9" in tokens.json()["error"]["message"]
        ollama = httpx.post(f"{base}/api/generate", json={"model": "words", "prompt": "a", "options": {"num_predict": 99}})
        assert ollama.status_code == 400 and "options.num_predict" in ollama.json()["error"]
        size = httpx.post(f"{base}/v1/images/generations", json={"model": "painter", "prompt": "p", "size": "64x8"})
        check_error(size, 400, "invalid_input")
        many = httpx.post(f"{base}/v1/images/generations", json={"model": "painter", "prompt": "p", "n": 3})
        check_error(many, 400, "invalid_input")
        ok = httpx.post(f"{base}/v1/completions", json={"model": "words", "prompt": "a b", "max_tokens": 8})
        assert ok.json()["choices"][0]["text"] == "a b "


def test_image_urls_on_private_addresses_and_local_paths_are_refused_unless_allowed(tmp_path):
    import functools
    import http.server

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    (tmp_path / "init.png").write_bytes(buf.getvalue())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{files.server_address[1]}/init.png"
    try:
        body = {"model": "painter", "prompt": "p", "size": "8x8", "image": url}
        with running(create_app(config(py("painter", "painter")))) as base:
            refused = httpx.post(f"{base}/v1/images/edits", json=body)
            check_error(refused, 400, "invalid_input")
            assert "127.0.0.1" in refused.json()["error"]["message"]
            local = httpx.post(f"{base}/v1/images/edits", json={**body, "image": str(tmp_path / "init.png")})
            check_error(local, 400, "invalid_input")
            assert "local paths are not accepted" in local.json()["error"]["message"]
        with running(create_app(config(py("painter", "painter"), allow_private_urls=True))) as base:
            assert httpx.post(f"{base}/v1/images/edits", json=body).status_code == 200
    finally:
        files.shutdown()
        files.server_close()


def test_ready_waits_for_preloads_and_metrics_carry_the_pools_figures():
    server_models.GatedLoad.release.clear()
    cfg = config(py("slowload", "gated_load", preload=True), py("hash", "embedder"))
    with running(create_app(cfg)) as base:
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        deadline = time.monotonic() + 60
        while True:  # the preload starts in the background; its loader then waits for the test
            waiting = httpx.get(f"{base}/ready")
            assert waiting.status_code == 503
            if waiting.json()["models"]["slowload"]["state"] == "loading":
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server_models.GatedLoad.release.set()
        wait_ready(base)
        assert httpx.get(f"{base}/ready").json()["models"] == {"slowload": {"state": "ready"}}
        httpx.post(f"{base}/v1/embeddings", json={"model": "hash", "input": ["a", "b"]})
        httpx.post(f"{base}/v1/embeddings", json={"model": "nope", "input": "a"})
        text = httpx.get(f"{base}/metrics").text
    assert 'mpool_requests_total{model="hash"} 1.0' in text
    assert 'mpool_model_loaded{model="slowload"} 1.0' in text
    assert 'mpool_running_requests{model="hash"} 0.0' in text
    assert 'mpool_replicas{model="hash"}' in text and 'mpool_device_memory_bytes{device="cpu",kind="budget"}' in text
    assert 'mpool_compute_time_seconds{model="hash",quantile="0.5"}' in text
    assert 'mpool_http_request_duration_seconds_count{method="POST",route="/v1/embeddings",status="200"} 1.0' in text
    assert 'route="/v1/embeddings",status="404"' in text


def test_metrics_serve_a_decoders_kv_cache_and_prefix_cache_gauges(llama_dir):
    from mpool.server.metrics import PoolCollector

    prompt = list(range(8, 48))  # two full cache blocks, then eight tokens
    with mpool.Pool() as pool:
        pool.register("llama", llama_dir, max_replicas=1)
        for _ in range(2):  # the second reads the first's two blocks
            list(pool.generate("llama", prompt, max_tokens=4, temperature=0, ignore_eos=True))
        samples = {(s.labels["model"], s.labels["name"]): s.value
                   for family in PoolCollector(pool).collect() if family.name == "mpool_model_usage"
                   for s in family.samples}
    assert samples[("llama", "prefix_cache_prompt_tokens")] == 80
    assert samples[("llama", "prefix_cache_hit_tokens")] == 32
    assert samples[("llama", "prefix_cache_hit_rate")] == 0.4
    assert samples[("llama", "kv_cache_blocks_in_use")] == 0 and samples[("llama", "kv_cache_blocks_free")] > 0


def test_config_file_errors_name_the_file_table_and_key(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.m]\npath = "/x"\ncontxt_length = 5\n')
    with pytest.raises(mpool.InvalidInput, match=r"models.toml: models\.m\.contxt_length: unknown key"):
        load_config(path)
    path.write_text('[server]\nport = "80"\n')
    with pytest.raises(mpool.InvalidInput, match=r"server\.port"):
        load_config(path)
    path.write_text("[server\n")
    with pytest.raises(mpool.InvalidInput, match="not valid TOML"):
        load_config(path)
    with pytest.raises(mpool.InvalidInput, match="exactly one of path"):
        config_from_dict({"models": {"m": {"path": "a", "python": "b:c"}}})
    with pytest.raises(mpool.InvalidInput, match="keep_alive"):
        config_from_dict({"models": {"m": {"path": "a", "keep_alive": "forever"}}})
    path.write_text(
        '[server]\nport = 9000\n[limits]\nmax_tokens = 64\n[pool]\nrequest_timeout = 5\n'
        '[models.m]\npath = "/x"\nkeep_alive = "5m"\npreload = true\nmax_replicas = 2\n'
    )
    cfg = load_config(path)
    assert (cfg.port, cfg.limits.max_tokens, cfg.pool["request_timeout"]) == (9000, 64, 5)
    assert (cfg.models[0].keep_alive, cfg.models[0].preload, cfg.models[0].max_replicas) == (300.0, True, 2)
    assert cfg.host == "127.0.0.1"


def _serve_process(tmp_path, toml: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port_sock = socket.socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    (tmp_path / "serve.toml").write_text(toml)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpool", "serve", "--config", str(tmp_path / "serve.toml"), "--port", str(port),
         "--log-level", "warning", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, port


def test_cli_refuses_a_bad_config_and_no_models_with_a_clear_message(tmp_path):
    proc, _ = _serve_process(tmp_path, "[models.m]\nwhere = 1\n")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "models.m.where: unknown key" in err
    proc, _ = _serve_process(tmp_path, "")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "no models to serve" in err


def test_sigterm_during_a_stream_lets_it_finish_then_exits_cleanly(tmp_path):
    proc, port = _serve_process(tmp_path, '[server]\ngrace_period = 60\n[models.slow]\npython = "server_models:slow"\n')
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        words = []
        with httpx.stream("POST", f"{base}/v1/completions", timeout=120,
                          json={"model": "slow", "prompt": "150", "stream": True, "max_tokens": 4096}) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    words.append(json.loads(line[6:])["choices"][0]["text"])
                    break
            proc.send_signal(signal.SIGTERM)
            done = False
            for line in lines:
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    words.append(json.loads(line[6:])["choices"][0]["text"])
        assert done and "".join(words) == "".join(f"w{i} " for i in range(150))
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_images_in_chat_messages_reach_a_vision_model_as_the_pool_would_send_them(tmp_path):
    from llava_models import build_llava, synthetic_image

    path = build_llava(tmp_path, "llama")
    pixels = synthetic_image(1, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    with mpool.Pool() as pool:
        pool.register("v", str(path))
        messages = [{"role": "user", "content": [{"type": "image", "image": buf.getvalue()},
                                                 {"type": "text", "text": "what is this?"}]}]
        expected = pool.chat("v", messages, max_tokens=8, ignore_eos=True).text()
        with running(create_app(ServerConfig(), pool=pool)) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            out = client.chat.completions.create(
                model="v", max_tokens=8, extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
                    {"type": "text", "text": "what is this?"},
                ]}],
            )
            assert out.choices[0].message.content == expected
            assert out.usage.prompt_tokens > 25  # the image's 25 patch tokens are part of the prompt
            client.close()
            ollama = httpx.post(f"{base}/api/chat", json={
                "model": "v", "stream": False, "options": {"num_predict": 8},
                "messages": [{"role": "user", "content": "what is this?", "images": [b64]}],
            }).json()
            assert ollama["message"]["content"] == expected or ollama["done_reason"] == "stop"
            words = httpx.post(f"{base}/v1/chat/completions", json={
                "model": "v", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]})
            check_error(words, 400, "invalid_input")


def test_ollama_generate_streams_ndjson_and_every_streamed_route_ends_cleanly(server):
    with httpx.stream("POST", f"{server}/api/generate",
                      json={"model": "llama", "prompt": "hello", "options": {"num_predict": 5}}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["eval_count"] <= 5
    whole = httpx.post(f"{server}/api/generate",
                       json={"model": "llama", "prompt": "hello", "stream": False, "options": {"num_predict": 5}}).json()
    assert "".join(x["response"] for x in lines) == whole["response"]
    with httpx.stream("POST", f"{server}/v1/completions",
                      json={"model": "words", "prompt": "a b", "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_n_choices_and_batched_prompts_each_equal_their_solo_run_streamed_or_not(server, client):
    messages = [{"role": "user", "content": "Pick some words"}]
    extra = {"ignore_eos": True}
    out = client.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=1.0, seed=11,
                                         n=3, extra_body=extra)
    solo = [client.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=1.0,
                                           seed=11 + j, extra_body=extra) for j in range(3)]
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.message.content for c in out.choices] == [s.choices[0].message.content for s in solo]
    assert len({c.message.content for c in out.choices}) > 1  # different seeds, different samples
    assert out.usage.prompt_tokens == solo[0].usage.prompt_tokens  # the prompt counts once
    assert out.usage.completion_tokens == 18
    streamed = ["", "", ""]
    finishes = {}
    for chunk in client.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=1.0,
                                                seed=11, n=3, stream=True, extra_body=extra):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert streamed == [c.message.content for c in out.choices] and finishes == {0: "length", 1: "length", 2: "length"}

    prompts = ["Once upon a time", "The quick brown fox"]
    batch = client.completions.create(model="llama", prompt=prompts, n=2, max_tokens=5, extra_body=extra)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model="llama", prompt=p, max_tokens=5, extra_body=extra) for p in prompts]
    assert [c.text for c in batch.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert batch.usage.prompt_tokens == alone[0].usage.prompt_tokens + alone[1].usage.prompt_tokens
    texts = [""] * 4
    for chunk in client.completions.create(model="llama", prompt=prompts, n=2, max_tokens=5, stream=True,
                                           extra_body=extra):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in batch.choices]
    too_many = httpx.post(f"{server}/v1/completions", json={"model": "llama", "prompt": prompts, "n": 5})
    check_error(too_many, 400, "invalid_input")
    assert "at most 8" in too_many.json()["error"]["message"]
