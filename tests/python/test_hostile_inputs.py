"""Hostile inputs: every bad argument is an mpool error naming the parameter, never a
pybind11 TypeError or a silent conversion; durations, copies, fork(), slow image
servers and models that misuse their callbacks cannot hang or crash the process."""

from __future__ import annotations

import asyncio
import copy
import fractions
import functools
import http.server
import io
import math
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

import mpool
import mpool.testing
from models_for_tests import HashEmbedder, WordStreamer

INF, NAN = math.inf, math.nan


class Painter:
    def generate_image(self, prompt, config, progress):
        progress(1, 1)
        return np.zeros((config["height"], config["width"], 3), dtype=np.uint8)


class Describer:
    def describe(self, image, query, params):
        yield "an image"


class ImageEmbedder:
    dimension = 2

    def embed_images(self, images):
        return np.zeros((len(images), 2), dtype=np.float32)


def png_bytes(size=(4, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def full_pool(pool):
    """A pool with one model per capability."""
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    pool.register("gen", mpool.PyModel("text_to_text", lambda d: WordStreamer(), memory_mb=1))
    pool.register("img", mpool.PyModel("image_embedding", lambda d: ImageEmbedder(), memory_mb=1))
    pool.register("vis", mpool.PyModel("vision", lambda d: Describer(), memory_mb=1))
    pool.register("paint", mpool.PyModel("text_to_image", lambda d: Painter(), memory_mb=1))
    return pool


def run_async(coro_or_iter):
    async def main():
        if hasattr(coro_or_iter, "__anext__"):
            return [c async for c in coro_or_iter]
        return await coro_or_iter

    return asyncio.run(main())


IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)
MESSAGES = [{"role": "user", "content": "hi"}]

# Every Pool method that takes a key, called with `k` as the key.
KEYED_CALLS = {
    "embed": lambda p, k: p.embed(k, ["x"]),
    "aembed": lambda p, k: run_async(p.aembed(k, ["x"])),
    "embed_images": lambda p, k: p.embed_images(k, IMAGE),
    "aembed_images": lambda p, k: run_async(p.aembed_images(k, IMAGE)),
    "generate": lambda p, k: p.generate(k, "x"),
    "agenerate": lambda p, k: run_async(p.agenerate(k, "x")),
    "chat": lambda p, k: p.chat(k, MESSAGES),
    "achat": lambda p, k: run_async(p.achat(k, MESSAGES)),
    "chat_template": lambda p, k: p.chat_template(k),
    "render_chat": lambda p, k: p.render_chat(k, MESSAGES),
    "describe": lambda p, k: p.describe(k, IMAGE, "what?"),
    "adescribe": lambda p, k: run_async(p.adescribe(k, IMAGE, "what?")),
    "generate_image": lambda p, k: p.generate_image(k, "fox"),
    "agenerate_image": lambda p, k: p.agenerate_image(k, "fox"),
    "register": lambda p, k: p.register(k, mpool.testing.noop_model()),
    "unregister": lambda p, k: p.unregister(k),
    "unload": lambda p, k: p.unload(k),
    "aunload": lambda p, k: run_async(p.aunload(k)),
    "pin": lambda p, k: p.pin(k),
    "unpin": lambda p, k: p.unpin(k),
    "set_keep_alive": lambda p, k: p.set_keep_alive(k, 1.0),
}


@pytest.mark.parametrize("bad_key", [None, 5, b"emb", ["emb"], ("emb",), 1.5], ids=repr)
@pytest.mark.parametrize("method", sorted(KEYED_CALLS))
def test_a_key_that_is_not_a_str_is_invalid_input_in_every_method(full_pool, method, bad_key):
    with pytest.raises(mpool.InvalidInput, match=r"key must be a str, got ") as e:
        KEYED_CALLS[method](full_pool, bad_key)
    assert isinstance(e.value, ValueError)
    assert full_pool.embed("emb", ["ok"]).shape == (1, 8)  # the pool stays healthy


@pytest.mark.parametrize("method", ["embed", "generate", "unload", "pin", "unpin", "set_keep_alive", "describe"])
def test_an_unregistered_str_key_is_model_not_found(full_pool, method):
    with pytest.raises(mpool.ModelNotFound, match="nope"):
        list(KEYED_CALLS[method](full_pool, "nope") or [])


@pytest.mark.parametrize(
    ("call", "name", "limit"),
    [
        (lambda p: p.generate("gen", "x", max_tokens=2**64), "max_tokens", "2147483647"),
        (lambda p: p.generate("gen", "x", seed=-1), "seed", "18446744073709551615"),
        (lambda p: p.generate("gen", "x", seed=2**64), "seed", "18446744073709551615"),
        (lambda p: p.generate("gen", "x", top_k=2**70), "top_k", "2147483647"),
        (lambda p: p.generate("gen", "x", logprobs=2**70), "logprobs", "20"),
        (lambda p: p.generate("gen", [1, 2**70]), r"prompt\[1\]", "9223372036854775807"),
        (lambda p: p.generate("gen", [-(2**63) - 1]), r"prompt\[0\]", "9223372036854775807"),
        (lambda p: p.generate("gen", "x", stop_token_ids=[2**64]), r"stop_token_ids\[0\]", "9223372036854775807"),
        (lambda p: p.register("m", mpool.testing.noop_model(), max_replicas=2**40), "max_replicas", "1024"),
        (lambda p: p.generate_image("paint", "fox", width=2**63), "width", "16384"),
        (lambda p: p.generate_image("paint", "fox", height=2**64), "height", "16384"),
        (lambda p: p.generate_image("paint", "fox", steps=2**63), "steps", "10000"),
        (lambda p: p.generate_image("paint", "fox", seed=2**64), "seed", "18446744073709551615"),
        (lambda p: mpool.Pool(max_queue=2**64), "max_queue", "2147483647"),
        (lambda p: mpool.Pool(cold_start_replicas=2**40), "cold_start_replicas", "1024"),
        (lambda p: mpool.PyModel("text_embedding", HashEmbedder, 1, max_replicas=2**40), "max_replicas", "1024"),
        (lambda p: mpool.PyModel("text_embedding", HashEmbedder, 1, batch_budget=2**64), "batch_budget", "2147483647"),
        (lambda p: mpool.testing.noop_model(dimension=2**70), "dimension", "1048576"),
    ],
)
def test_integers_beyond_their_native_type_are_invalid_input_stating_the_limit(full_pool, call, name, limit):
    with pytest.raises(mpool.InvalidInput, match=rf"{name} must be an int in \[-?\d+, {limit}\]"):
        call(full_pool)
    assert full_pool.embed("emb", ["ok"]).shape == (1, 8)


@pytest.mark.parametrize("images", [None, 5, 5.0, object(), {"a": IMAGE}, [None], [5]], ids=repr)
def test_embed_images_of_something_that_is_not_an_image_is_invalid_input(full_pool, images):
    with pytest.raises(mpool.InvalidInput, match=r"image"):
        full_pool.embed_images("img", images)


@pytest.mark.parametrize(
    "image", [np.zeros((0, 4, 3), np.uint8), Image.new("RGB", (0, 0))], ids=["empty_array", "empty_pil"]
)
def test_an_empty_image_is_invalid_input(full_pool, image):
    with pytest.raises(mpool.InvalidInput, match=r"image #0: the image is empty"):
        full_pool.embed_images("img", image)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda p: p.generate("gen", "x", temperature="0.5"), "temperature"),
        (lambda p: p.generate("gen", "x", max_tokens="5"), "max_tokens"),
        (lambda p: p.generate("gen", "x", ignore_eos="no"), "ignore_eos"),
        (lambda p: p.embed("emb", ["x"], timeout="1"), "timeout"),
        (lambda p: p.embed("emb", ["x"], truncate="no"), "truncate"),
        (lambda p: p.embed("emb", ["x"], task=5), "task"),
        (lambda p: p.generate_image("paint", "fox", guidance_scale="7"), "guidance_scale"),
        (lambda p: p.generate_image("paint", "fox", init_image=np.zeros((2, 2, 3), np.uint8), strength="0.5"),
         "strength"),
        (lambda p: p.generate_image("paint", "fox", width=64.0), "width"),
        (lambda p: p.generate_image("paint", "fox", negative_prompt=5), "negative_prompt"),
        (lambda p: p.set_keep_alive("emb", "x"), "seconds"),
        (lambda p: p.unload("emb", "1"), "timeout"),
        (lambda p: p.unregister("emb", "1"), "timeout"),
        (lambda p: p.close("1"), "timeout"),
        (lambda p: p.register("m", mpool.testing.noop_model(), keep_alive="x"), "keep_alive"),
        (lambda p: p.register("m", mpool.testing.noop_model(), pinned="yes"), "pinned"),
        (lambda p: p.register("m", mpool.testing.noop_model(), devices=5), "devices"),
        (lambda p: mpool.Pool(request_timeout="3"), "request_timeout"),
        (lambda p: mpool.Pool(keep_alive="x"), "keep_alive"),
        (lambda p: mpool.Pool(memory_fraction="0.5"), "memory_fraction"),
        (lambda p: mpool.Pool(reserve_mb="1"), "reserve_mb"),
        (lambda p: mpool.Pool(max_queue=10.0), "max_queue"),
        (lambda p: mpool.Pool(scale_up_after="1"), "scale_up_after"),
        (lambda p: mpool.Pool(fetch_timeout="1"), "fetch_timeout"),
        (lambda p: mpool.Pool(maintenance_interval="1"), "maintenance_interval"),
        (lambda p: mpool.testing.sleep_model("1"), "seconds"),
    ],
)
def test_strings_and_wrong_types_where_numbers_belong_are_invalid_input_naming_the_parameter(full_pool, call, name):
    with pytest.raises(mpool.InvalidInput, match=rf"^{name}\b") as e:
        call(full_pool)
    assert isinstance(e.value, ValueError)
    assert full_pool.embed("emb", ["ok"]).shape == (1, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capability": None}, "capability must be one of"),
        ({"capability": 5}, "capability must be one of"),
        ({"capability": b"text_embedding"}, "capability must be one of"),
        ({"capability": "texts"}, "capability 'texts' is not one of"),
        ({"capability": []}, "at least one is required"),
        ({"capability": ["text_embedding", None]}, "capability None is not one of"),
        ({"capability": ["text_embedding", "text_embedding"]}, "listed twice"),
        ({"loader": None}, "loader must be callable"),
        ({"loader": "HashEmbedder"}, "loader must be callable"),
        ({"memory_mb": -1}, "memory_mb must be a finite number >= 0"),
        ({"memory_mb": NAN}, "memory_mb must be a finite number >= 0, got NaN"),
        ({"memory_mb": INF}, "memory_mb must be a finite number >= 0, got inf"),
        ({"memory_mb": "1"}, "memory_mb must be a finite number >= 0"),
        ({"memory_mb": None}, "memory_mb must be a finite number >= 0"),
        ({"memory_mb": True}, "memory_mb must be a finite number >= 0"),
        ({"devices": None}, "devices must be a device name or a list of them"),
        ({"devices": []}, "devices is empty"),
        ({"devices": [5]}, r"devices\[0\] must be a str"),
        ({"devices": [""]}, r"devices\[0\] must be a non-empty str"),
        ({"max_replicas": 0}, r"max_replicas must be an int in \[1, 1024\]"),
        ({"max_replicas": True}, r"max_replicas must be an int in \[1, 1024\]"),
        ({"max_replicas": 2.0}, r"max_replicas must be an int in \[1, 1024\]"),
        ({"keep_alive": "x"}, "keep_alive must be a number of seconds"),
        ({"keep_alive": NAN}, "keep_alive must be a number of seconds.*got NaN"),
        ({"pinned": "yes"}, "pinned must be True or False"),
        ({"batch_budget": -1}, r"batch_budget must be an int in \[0, 2147483647\]"),
    ],
)
def test_a_bad_py_model_definition_is_invalid_input(kwargs, match):
    args = {"capability": "text_embedding", "loader": HashEmbedder, "memory_mb": 1} | kwargs
    with pytest.raises(mpool.InvalidInput, match=match):
        mpool.PyModel(**args)


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "name", ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
)
def test_non_finite_sampling_parameters_are_invalid_input(full_pool, name, value):
    with pytest.raises(mpool.InvalidInput, match=rf"^{name} must be a finite number"):
        full_pool.generate("gen", "x", **{name: value})


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["guidance_scale", "strength"])
def test_non_finite_image_parameters_are_invalid_input(full_pool, name, value):
    init = {"init_image": np.zeros((2, 2, 3), np.uint8)} if name == "strength" else {}
    with pytest.raises(mpool.InvalidInput, match=rf"^{name} must be a finite number"):
        full_pool.generate_image("paint", "fox", **{name: value}, **init)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([1.9], r"stop_token_ids\[0\] must be an int"),
        ([True], r"stop_token_ids\[0\] must be an int"),
        ([1, "2"], r"stop_token_ids\[1\] must be an int"),
        (b"\x01\x02", "stop_token_ids must be a list of int token ids"),
        ("12", "stop_token_ids must be a list of int token ids"),
        (5, "stop_token_ids must be a list of int token ids"),
    ],
    ids=repr,
)
def test_stop_token_ids_must_be_ints_not_floats_bools_or_bytes(full_pool, ids, match):
    with pytest.raises(mpool.InvalidInput, match=match):
        full_pool.generate("gen", "x", stop_token_ids=ids)


@pytest.mark.parametrize("prompt", [b"hello", bytearray(b"hello"), memoryview(b"hello")], ids=repr)
def test_a_bytes_prompt_is_refused_rather_than_taken_as_token_ids(full_pool, prompt):
    with pytest.raises(mpool.InvalidInput, match="bytes are not token ids|non-empty str or a non-empty list"):
        full_pool.generate("gen", prompt)


@pytest.mark.parametrize("prompt", [[1.0, 2.0], [True], [1, None], [[1]]], ids=repr)
def test_token_id_prompts_take_only_ints(full_pool, prompt):
    with pytest.raises(mpool.InvalidInput, match=r"prompt\[\d\] must be an int"):
        full_pool.generate("gen", prompt)


@pytest.mark.parametrize(
    "call",
    [
        lambda p, t: p.embed("emb", ["x"], timeout=t),
        lambda p, t: run_async(p.aembed("emb", ["x"], timeout=t)),
        lambda p, t: p.generate("gen", "x", timeout=t),
        lambda p, t: p.chat("gen", MESSAGES, timeout=t),
        lambda p, t: p.embed_images("img", IMAGE, timeout=t),
        lambda p, t: p.describe("vis", IMAGE, "what?", timeout=t),
        lambda p, t: p.generate_image("paint", "fox", timeout=t),
        lambda p, t: p.unload("emb", t),
        lambda p, t: p.unregister("emb", t),
        lambda p, t: p.close(t),
        lambda p, t: mpool.Pool(request_timeout=t),
        lambda p, t: mpool.Pool(fetch_timeout=t),
    ],
    ids=[
        "embed", "aembed", "generate", "chat", "embed_images", "describe", "generate_image", "unload", "unregister",
        "close", "Pool.request_timeout", "Pool.fetch_timeout",
    ],
)
@pytest.mark.parametrize("bad", [True, False, NAN, -1.0, "1", [1]], ids=repr)
def test_bools_nan_negative_and_non_numbers_are_never_durations(full_pool, call, bad):
    with pytest.raises(mpool.InvalidInput, match=r"must be a number of seconds"):
        call(full_pool, bad)
    assert full_pool.embed("emb", ["ok"]).shape == (1, 8)


@pytest.mark.parametrize("huge", [10**400, fractions.Fraction(10**400)], ids=["int", "Fraction"])
def test_a_number_beyond_floats_range_counts_as_infinite(full_pool, huge):
    # As a duration it is no limit; where a finite number belongs it is InvalidInput naming the parameter.
    assert full_pool.embed("emb", ["x"], timeout=huge).shape == (1, 8)
    full_pool.set_keep_alive("emb", huge)
    with mpool.Pool(request_timeout=huge) as other:
        other.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
        assert other.embed("emb", "x").shape == (1, 8)
    with pytest.raises(mpool.InvalidInput, match="temperature"):
        full_pool.generate("gen", "x", temperature=huge)
    with pytest.raises(mpool.InvalidInput, match="memory_mb"):
        mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=huge)
    with pytest.raises(mpool.InvalidInput, match="timeout"):
        full_pool.embed("emb", ["x"], timeout=-huge)
    with pytest.raises(mpool.InvalidInput, match="latents"):
        full_pool.generate_image("paint", "fox", latents=[[[[10**400]]]])
    assert full_pool.embed("emb", ["ok"]).shape == (1, 8)


def test_template_kwargs_with_a_key_that_is_not_a_str_is_invalid_input(full_pool):
    with pytest.raises(mpool.InvalidInput, match="template_kwargs"):
        full_pool.chat("gen", MESSAGES, template_kwargs={1: 2})


@pytest.mark.parametrize("content", [b"hi", bytearray(b"hi"), memoryview(b"hi")], ids=repr)
def test_chat_content_given_as_bytes_is_invalid_input_not_rendered_as_a_type_name(full_pool, content):
    with pytest.raises(mpool.InvalidInput, match=r"messages\[1\]\['content'\] must be a str"):
        full_pool.chat("gen", [MESSAGES[0], {"role": "user", "content": content}])


def test_numpy_bools_are_taken_as_skip_layer_guidance_like_every_other_flag(full_pool):
    for flag in (np.bool_(True), np.bool_(False)):
        assert full_pool.generate_image("paint", "fox", skip_layer_guidance=flag, guidance_scale=2.0).result() is not None


def test_progress_with_no_stderr_embeds_without_a_bar(full_pool, monkeypatch):
    # Under pythonw, some services and `2>&-`, sys.stderr is None: there is nowhere to draw.
    monkeypatch.setattr(sys, "stderr", None)
    assert full_pool.embed("emb", ["a", "b"], progress=True).shape == (2, 8)
    assert run_async(full_pool.aembed("emb", ["a", "b"], progress=True)).shape == (2, 8)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.embed("emb", ["x"], timeout=0),
        lambda p: p.generate("gen", "x", timeout=0.0),
        lambda p: mpool.Pool(request_timeout=0),
        lambda p: mpool.Pool(fetch_timeout=0),
        lambda p: mpool.Pool(maintenance_interval=0),
    ],
)
def test_a_zero_timeout_is_invalid_input_where_it_could_never_be_met(full_pool, call):
    with pytest.raises(mpool.InvalidInput, match=r"must be a number of seconds > 0"):
        call(full_pool)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fetch_timeout": -1}, "fetch_timeout must be a number of seconds > 0"),
        ({"scale_down_after": -1}, "scale_down_after must be a number of seconds >= 0"),
        ({"scale_up_after": -0.5}, "scale_up_after must be a number of seconds >= 0"),
        ({"scale_up_queue_depth": -1}, "scale_up_queue_depth must be a number of seconds >= 0"),
        ({"reserve_mb": -1}, "reserve_mb must be a finite number >= 0"),
        ({"reserve_mb": INF}, "reserve_mb must be a finite number >= 0"),
        ({"maintenance_interval": -1}, "maintenance_interval must be a number of seconds > 0"),
        ({"memory_fraction": NAN}, r"memory_fraction must be a finite number in \(0, 1\], got NaN"),
        ({"memory_fraction": 0}, r"memory_fraction must be a finite number in \(0, 1\]"),
        ({"keep_alive": NAN}, "keep_alive must be a number of seconds"),
        ({"memory_budget_mb": {"cpu": NAN}}, r"memory_budget_mb\['cpu'\] must be a finite number >= 0, got NaN"),
        ({"memory_budget_mb": {"cpu": INF}}, r"memory_budget_mb\['cpu'\] must be a finite number >= 0, got inf"),
        ({"memory_budget_mb": {"cpu": -1}}, r"memory_budget_mb\['cpu'\] must be a finite number >= 0"),
        ({"memory_budget_mb": {"cpu": "100"}}, r"memory_budget_mb\['cpu'\] must be a finite number >= 0"),
        ({"memory_budget_mb": {"cpu": None}}, r"memory_budget_mb\['cpu'\] must be a finite number >= 0"),
        ({"memory_budget_mb": {5: 100}}, "memory_budget_mb key must be a str"),
        ({"memory_budget_mb": [("cpu", 100)]}, "memory_budget_mb must be a dict"),
        ({"max_queue": 0}, r"max_queue must be an int in \[1, 2147483647\]"),
        ({"cold_start_replicas": 0}, r"cold_start_replicas must be an int in \[1, 1024\]"),
    ],
)
def test_bad_pool_settings_are_invalid_input_before_any_thread_starts(kwargs, match):
    with pytest.raises(mpool.InvalidInput, match=match):
        mpool.Pool(**kwargs)


def test_error_messages_name_the_parameter_and_show_the_value(full_pool):
    cases = [
        (lambda: full_pool.generate("gen", "x", temperature=NAN), "temperature", "NaN"),
        (lambda: full_pool.generate("gen", "x", max_tokens=2**64), "max_tokens", "18446744073709551616"),
        (lambda: full_pool.generate("gen", "x", top_p="0.9"), "top_p", "'0.9' (str)"),
        (lambda: full_pool.embed("emb", ["x"], timeout=True), "timeout", "True (bool)"),
        (lambda: full_pool.embed(b"emb", ["x"]), "key", "b'emb' (bytes)"),
        (lambda: full_pool.generate_image("paint", "fox", width=2**63), "width", "9223372036854775808"),
    ]
    for call, name, shown in cases:
        with pytest.raises(mpool.InvalidInput) as e:
            call()
        assert str(e.value).startswith(name) and shown in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.embed("emb", ["ok", "\ud800"]),
        lambda p: p.generate("gen", "\udfff"),
        lambda p: p.generate("gen", "x", stop=["\ud800"]),
        lambda p: p.describe("vis", IMAGE, "\ud800?"),
        lambda p: p.embed_images("img", "http://\ud800.example/x.png"),
        lambda p: p.embed("\ud800", ["x"]),
    ],
)
def test_strings_that_cannot_be_utf8_are_invalid_input(full_pool, call):
    with pytest.raises(mpool.InvalidInput, match="not valid Unicode"):
        call(full_pool)


def test_values_the_bindings_cannot_convert_are_invalid_input_not_runtime_error(full_pool):
    # The Python layer never sends these; the bindings still translate a failed
    # conversion (pybind11 cast_error) into InvalidInput, as a safety net.
    with pytest.raises(mpool.InvalidInput, match="invalid argument"):
        full_pool._native.generate("gen", "x", {"max_tokens": "5"}, None)
    with pytest.raises(mpool.InvalidInput, match="invalid argument"):
        full_pool._native.generate("gen", [1, "2"], {}, None)


def test_numpy_integers_and_floats_are_accepted_as_numbers(full_pool):
    chunks = list(full_pool.generate("gen", "a b c", max_tokens=np.int64(2), temperature=np.float32(0.5)))
    assert "".join(c.text for c in chunks).split() == ["a", "b"]
    assert full_pool.embed("emb", ["x"], timeout=np.float64(5)).shape == (1, 8)


# --- durations: inf is "no limit" ----------------------------------------------------


class RecordingNative:
    """Stands in for mpool._core.Pool: records what the Python layer passes down."""

    def __init__(self, **options):
        self.options = options
        self.calls = []

    def __getattr__(self, name):
        def record(*args):
            self.calls.append((name, args))
            return self

        return record

    def result(self):  # embed_images_async(...).result()
        return np.zeros((1, 2), dtype=np.float32)


def test_infinite_and_huge_durations_are_accepted_and_reach_the_native_layer_as_floats(monkeypatch):
    # The native layer turns inf and huge values into "no limit"; here: they pass validation unchanged.
    monkeypatch.setattr(mpool._core, "Pool", RecordingNative)
    pool = mpool.Pool(
        request_timeout=INF, keep_alive=INF, fetch_timeout=INF, scale_up_after=INF, scale_down_after=1e300,
        scale_up_queue_depth=INF,
    )
    native = pool._native
    assert native.options["request_timeout"] == INF and native.options["keep_alive"] == INF
    assert native.options["scale_down_after"] == 1e300 and native.options["scale_up_queue_depth"] == INF
    for timeout in (INF, 1e300):
        pool.embed("k", ["x"], timeout=timeout)
        pool.generate("k", "x", timeout=timeout)
        pool.embed_images("k", IMAGE, timeout=timeout)
        pool.unload("k", timeout)
        pool.set_keep_alive("k", timeout)
        pool.register("k", mpool.testing.noop_model(), keep_alive=timeout)
    pool.set_keep_alive("k", -INF)  # negative: never unload
    pool.close(INF)
    passed = {
        "embed": [args[3] for name, args in native.calls if name == "embed"],
        "generate": [args[3] for name, args in native.calls if name == "generate"],
        "embed_images_async": [args[2] for name, args in native.calls if name == "embed_images_async"],
        "unload": [args[1] for name, args in native.calls if name == "unload"],
        "set_keep_alive": [args[1] for name, args in native.calls if name == "set_keep_alive"],
        "register": [args[1].keep_alive for name, args in native.calls if name == "register"],
        "shutdown": [args[0] for name, args in native.calls if name == "shutdown"],
    }
    assert passed == {
        "embed": [INF, 1e300],
        "generate": [INF, 1e300],
        "embed_images_async": [INF, 1e300],
        "unload": [INF, 1e300],
        "set_keep_alive": [INF, 1e300, -INF],
        "register": [INF, 1e300],
        "shutdown": [INF],
    }
    assert all(type(x) is float for values in passed.values() for x in values)


def test_a_request_without_timeout_gets_the_pool_timeout_and_image_requests_pass_it_explicitly(monkeypatch):
    monkeypatch.setattr(mpool._core, "Pool", RecordingNative)
    pool = mpool.Pool(request_timeout=7.0, fetch_timeout=3.0)
    pool.embed("k", ["x"])
    pool.embed_images("k", IMAGE)
    calls = dict(pool._native.calls)
    assert calls["embed"][3] is None  # the native pool applies its default
    # Fetching counts against it (see below); the pool's fetch options come with each call,
    # and that the timeout is the pool's (so it bounds each sub-batch of a split call), no progress counter.
    assert calls["embed_images_async"][2:] == (7.0, 3.0, False, 64 << 20, None, False, None)


# --- copying and fork() -------------------------------------------------------------


@pytest.mark.parametrize(
    "attempt",
    [copy.copy, copy.deepcopy, pickle.dumps, lambda p: pickle.dumps(p, protocol=0)],
    ids=["copy", "deepcopy", "pickle", "pickle_protocol_0"],
)
def test_a_pool_refuses_to_be_copied_or_pickled_with_a_type_error_naming_pool(pool, attempt):
    with pytest.raises(TypeError, match=r"mpool\.Pool cannot be copied or pickled") as e:
        attempt(pool)
    assert isinstance(e.value, mpool.NotCopyable) and isinstance(e.value, mpool.PoolError)
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    assert pool.embed("emb", ["ok"]).shape == (1, 8)


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import mpool
    from models_for_tests import HashEmbedder

    pool = mpool.Pool(request_timeout=5.0)
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    pool.embed("emb", ["warm"])  # replica and maintenance threads are running now

    def child_checks():
        failures = []
        checks = {{
            "embed": lambda: pool.embed("emb", ["x"]),
            "generate": lambda: pool.generate("emb", "x"),
            "stats": lambda: pool.stats(),
            "models": lambda: pool.models(),
            "register": lambda: pool.register("other", mpool.testing.noop_model()),
            "unload": lambda: pool.unload("emb"),
            "pin": lambda: pool.pin("emb"),
            "chat_template": lambda: pool.chat_template("emb"),
        }}
        for name, call in checks.items():
            try:
                call()
                failures.append(name + ": no error")
            except mpool.ShuttingDown as e:
                if "before fork()" not in str(e):
                    failures.append(name + ": " + str(e))
            except Exception as e:
                failures.append(name + ": " + type(e).__name__ + ": " + str(e))
        pool.close()  # a no-op in the child
        with mpool.Pool() as fresh:  # a pool made in the child works
            fresh.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
            if fresh.embed("emb", ["x"]).shape != (1, 8):
                failures.append("fresh pool")
        return failures

    import mpool.testing
    pid = os.fork()
    if pid == 0:
        failures = child_checks()
        if failures:
            print("child:", failures, flush=True)
        if {normal_exit}:
            del pool  # the finalizer, then interpreter exit with atexit hooks: neither may hang
            sys.exit(3 if failures else 0)
        os._exit(3 if failures else 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        print("child hung", flush=True)
        sys.exit(4)
    assert pool.embed("emb", ["parent"]).shape == (1, 8)  # the parent's pool is untouched
    pool.close()
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.parametrize("normal_exit", [False, True], ids=["os._exit", "sys.exit"])
def test_a_pool_inherited_through_fork_raises_shutting_down_in_the_child_which_exits_cleanly(normal_exit):
    import os

    script = FORK_SCRIPT.format(tests=os.path.dirname(__file__), normal_exit=normal_exit)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


FORK_WHILE_NATIVE_THREADS_TAKE_THE_GIL = textwrap.dedent(
    """
    import os, sys, time
    from mpool import _core

    churn = _core._GilChurn(3)  # native threads making and dropping thread states nonstop
    while churn.acquisitions < 200:
        time.sleep(0.001)
    hung = 0
    for _ in range({forks}):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        deadline = time.monotonic() + 20
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.002)
    churn.stop()
    print("children hung in fork():", hung, "acquisitions:", churn.acquisitions, flush=True)
    sys.exit(1 if hung else 0)
    """
)


def test_fork_while_native_threads_take_the_gil_never_leaves_the_child_hung():
    # A native thread taking the GIL creates a Python thread state, which takes the
    # interpreter's thread-list lock; on Python 3.11 a child forked at that moment
    # hung in os.fork() for good. mpool's before-fork hook keeps forks out of it.
    script = FORK_WHILE_NATIVE_THREADS_TAKE_THE_GIL.format(forks=500)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


# --- image fetching counts against the request's deadline --------------------------


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.release.wait(20)  # type: ignore[attr-defined]
        body = png_bytes()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.png"
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "call",
    [
        lambda p, url, t: p.embed_images("img", url, timeout=t),
        lambda p, url, t: run_async(p.aembed_images("img", url, timeout=t)),
        lambda p, url, t: p.describe("vis", url, "what?", timeout=t),
        lambda p, url, t: p.generate_image("paint", "fox", init_image=url, timeout=t),
    ],
    ids=["embed_images", "aembed_images", "describe", "generate_image"],
)
@pytest.mark.parametrize("per_request", [True, False], ids=["timeout=", "Pool(request_timeout=)"])
def test_a_slow_image_url_times_out_with_the_request_not_after_fetch_timeout(slow_server, call, per_request):
    timeout = 0.5
    with mpool.Pool(
        request_timeout=20.0 if per_request else timeout, fetch_timeout=60.0, allow_private_urls=True  # loopback
    ) as pool:
        pool.register("img", mpool.PyModel("image_embedding", lambda d: ImageEmbedder(), memory_mb=1))
        pool.register("vis", mpool.PyModel("vision", lambda d: Describer(), memory_mb=1))
        pool.register("paint", mpool.PyModel("text_to_image", lambda d: Painter(), memory_mb=1))
        start = time.monotonic()
        with pytest.raises(mpool.Timeout, match=r"fetching and decoding the image\(s\) took the request's whole"):
            call(pool, slow_server, timeout if per_request else None)
        assert time.monotonic() - start < timeout + 10.0  # the server answers after 20 s, fetch_timeout is 60


def test_a_fetch_timeout_shorter_than_the_request_is_invalid_input_naming_the_url(slow_server):
    # The request still had time: the URL was too slow, an input problem.
    with mpool.Pool(request_timeout=20.0, fetch_timeout=0.3, allow_private_urls=True) as pool:  # loopback
        pool.register("img", mpool.PyModel("image_embedding", lambda d: ImageEmbedder(), memory_mb=1))
        with pytest.raises(mpool.InvalidInput, match=r"image #0: .*slow\.png: fetch failed"):
            pool.embed_images("img", slow_server)


# --- a model that keeps its progress callback -----------------------------------------

STASH_SCRIPT = textwrap.dedent(
    """
    import threading
    import numpy as np
    import mpool

    STASHED = []
    HAMMER_ERRORS = []

    class StashingPainter:
        def generate_image(self, prompt, config, progress):
            progress(1, 2)
            STASHED.append(progress)
            if prompt == "hammer":  # keeps reporting from another thread, across the request's end
                def hammer():
                    try:
                        while True:
                            progress(1, 2, preview=np.zeros((2, 2, 3), np.uint8))
                    except mpool.PoolError as e:
                        HAMMER_ERRORS.append(e)
                t = threading.Thread(target=hammer)
                t.start()
                STASHED.append(t)
            return np.zeros((2, 2, 3), dtype=np.uint8)

    with mpool.Pool() as pool:
        pool.register("paint", mpool.PyModel("text_to_image", lambda d: StashingPainter(), memory_mb=1))
        for i in range(30):
            prompt = "hammer" if i % 3 == 0 else "fox"
            image = pool.generate_image("paint", prompt, width=2, height=2, steps=2).result()
            assert image.size == (2, 2)
            for report in [s for s in STASHED if callable(s)]:
                try:
                    report(2, 2)
                    raise SystemExit("a finished request's callback did not raise")
                except mpool.Cancelled as e:
                    assert "belongs to a finished request" in str(e), str(e)
        for t in [s for s in STASHED if isinstance(s, threading.Thread)]:
            t.join(30)
            assert not t.is_alive()
        assert len(HAMMER_ERRORS) == 10 and all(isinstance(e, mpool.Cancelled) for e in HAMMER_ERRORS)
    print("ok")
    """
)


def test_a_progress_callback_kept_past_its_request_raises_cancelled_and_never_touches_freed_memory():
    # In a subprocess: before the fix this read a dead stack frame, which may crash the interpreter.
    result = subprocess.run([sys.executable, "-c", STASH_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# --- calls that do not fit the signature ------------------------------------------


MISFIT_CALLS = [
    (lambda p: p.embed("emb", ["a"], foo=1), r"Pool\.embed\(\) got an unexpected keyword argument 'foo'; its parameters: key, texts, "),
    (lambda p: p.embed("emb"), r"Pool\.embed\(\) missing a required argument: 'texts'"),
    (lambda p: p.stats(1), r"Pool\.stats\(\) too many positional arguments; its parameters: none"),
    (lambda p: p.register("x"), r"Pool\.register\(\) missing a required argument: 'model'"),
    (lambda p: p.rerank("emb", "q", ["d"], top=1), r"Pool\.rerank\(\) got an unexpected keyword argument 'top'"),
    (lambda p: asyncio.run(p.aembed("emb", ["a"], foo=1)), r"Pool\.aembed\(\) got an unexpected keyword argument 'foo'"),
    (lambda p: mpool.Pool(budget=1), r"Pool\.__init__\(\) got an unexpected keyword argument 'budget'"),
    (lambda p: mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory=1),
     r"PyModel\.__init__\(\) (missing a required argument: 'memory_mb'|got an unexpected keyword argument 'memory')"),
    (lambda p: mpool.NativeModel("/nowhere", threads=2), r"NativeModel\.__init__\(\) got an unexpected keyword argument 'threads'"),
    (lambda p: mpool.inspect(), r"inspect\(\) missing a required argument: 'path_or_repo_id'"),
    (lambda p: p.generate("gen", "hi").text(1), r"TextStream\.text\(\) too many positional arguments; its parameters: none"),
    (lambda p: mpool.similarity([[1.0]], foo=1), r"similarity\(\) got an unexpected keyword argument 'foo'; its parameters: a, b, top_k"),
]


@pytest.mark.parametrize("call,message", MISFIT_CALLS, ids=[f"call{i}" for i in range(len(MISFIT_CALLS))])
def test_a_call_that_does_not_fit_the_signature_is_invalid_arguments_naming_the_function(pool, call, message):
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    pool.register("gen", mpool.PyModel("text_to_text", lambda d: WordStreamer(), memory_mb=1))
    with pytest.raises(mpool.InvalidArguments, match=message) as e:
        call(pool)
    # An InvalidInput (a PoolError), and the TypeError Python raises for such calls.
    assert isinstance(e.value, mpool.InvalidInput) and isinstance(e.value, TypeError)
    assert pool.embed("emb", ["ok"]).shape == (1, 8)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: mpool.inspect(3), r"path_or_repo_id must be a str or os\.PathLike, got 3 \(int\)"),
        (lambda: mpool.safetensors_load(b"/x"), r"path_or_dir must be a str or os\.PathLike, got b'/x' \(bytes\)"),
        (lambda: mpool.safetensors_load("/x", dtype=16), r"dtype must be a str"),
        (lambda: mpool.safetensors_load("/x", expected=[1]), r"expected\[0\] must be a str"),
    ],
    ids=["inspect-int", "safetensors-bytes", "safetensors-dtype", "safetensors-expected"],
)
def test_the_loading_functions_refuse_a_path_or_name_of_the_wrong_type_as_invalid_input(call, message):
    with pytest.raises(mpool.InvalidInput, match=message):
        call()


def test_a_type_error_from_inside_a_call_that_fits_is_not_relabelled(pool):
    # A Python model whose loader raises TypeError: the call's arguments fit, so the
    # error is the model's (SpawnFailed), not InvalidArguments.
    def loader(device):
        raise TypeError("the loader's own bug")

    pool.register("bad", mpool.PyModel("text_embedding", loader, memory_mb=1))
    with pytest.raises(mpool.PoolError, match="the loader's own bug") as e:
        pool.embed("bad", ["x"])
    assert not isinstance(e.value, mpool.InvalidArguments)
