"""Generation parameters: the Python layer and the native models accept and refuse the same values.

Both read one table (capabilities/generation_params.h, exposed as
``mpool._core._generation_param_rules()``). For every entry, the values at each
edge of its range (the last accepted and the first refused) go through the
Python check and, bypassing it, through a native decoder's own check.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

import mpool
from mpool import _core, _params
from decoder_models import build_decoder, vocab_size

RULES = {rule["name"]: rule for rule in _core._generation_param_rules()}
PROMPT = [5, 6]  # token ids: no tokenizer involved
# Parameters whose range is the whole of their C++ type (uint64, int64): a value past
# it cannot even be converted, so the bindings refuse it before any model sees it.
WHOLE_TYPE_RANGE = {"seed", "stop_token_ids"}
CONTEXT = 8  # every accepted request ends within a few tokens


def edge_values(rule: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(accepted, refused): the values on both sides of each end of the rule's range."""
    kind = rule["kind"]
    if kind == "integer":
        lo, hi = rule["min_int"], rule["max_int"]
        return [lo, hi], [lo - 1, hi + 1]
    if kind == "token_ids":
        lo, hi = rule["min_int"], rule["max_int"]
        return [[lo], [hi], [lo, hi]], [[lo - 1], [hi + 1], [hi, hi + 1]]
    if kind == "real":
        accepted: list[Any] = []
        refused: list[Any] = [math.nan, math.inf, -math.inf]
        for bound, is_open, outward, largest in (
            (rule["lo"], rule["lo_open"], -math.inf, -sys.float_info.max),
            (rule["hi"], rule["hi_open"], math.inf, sys.float_info.max),
        ):
            if bound is None:
                accepted.append(largest)
            elif is_open:
                refused.append(bound)
                accepted.append(math.nextafter(bound, -outward))
            else:
                accepted.append(bound)
                refused.append(math.nextafter(bound, outward))
        return accepted, refused
    if kind == "stop_strings":
        return [["x"], ["x", "y"]], [[""], ["x", ""]]
    if kind == "flag":
        return [False, True], []  # a bool has no range: its edges are its two values
    raise AssertionError(f"a kind this test does not know: {kind}")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_decoder(tmp_path_factory.mktemp("params"), "llama")
    with mpool.Pool() as pool:
        pool.register("m", path, context_length=CONTEXT)
        yield pool._native


def python_verdict(name: str, value: Any) -> str | None:
    """None when the Python layer accepts ``value``, else its message."""
    try:
        _params.generation({name: value})
    except mpool.InvalidInput as e:
        return str(e)
    return None


def native_verdict(native: Any, name: str, value: Any) -> str | None:
    """None when the native decoder accepts ``value`` (and generates to the end), else its message."""
    params = {name: value}
    if name != "temperature":
        params["temperature"] = 0.0  # greedy: extreme sampling settings stay out of the arithmetic
    try:
        for _ in native.generate("m", PROMPT, params, 60.0):
            pass
    except mpool.InvalidInput as e:
        return str(e)
    return None


def test_every_generation_parameter_of_the_table_is_a_known_python_parameter():
    assert set(RULES) == set(_params._GENERATION_PARAMS)
    assert set(RULES) == {
        "max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "logprobs", "add_special_tokens",
    }


@pytest.mark.parametrize("name", sorted(RULES))
def test_python_and_native_accept_and_refuse_the_same_edge_values(native: Any, name: str) -> None:
    rule = RULES[name]
    accepted, refused = edge_values(rule)
    if rule["kind"] == "token_ids":
        accepted.append([0, vocab_size() - 1])  # the model's first and last token
    for value in accepted:
        assert python_verdict(name, value) is None, (name, value)
        verdict = native_verdict(native, name, value)
        if rule["kind"] == "token_ids" and any(not 0 <= t < vocab_size() for t in value):
            # Any int64 by the table; a model refuses ids outside its vocabulary, as it
            # does a prompt's, naming the first.
            first = next(i for i, t in enumerate(value) if not 0 <= t < vocab_size())
            assert verdict is not None and verdict.startswith(f"{name}[{first}] is {value[first]}, outside the vocabulary")
        else:
            assert verdict is None, (name, value, verdict)
    for value in refused:
        ours = python_verdict(name, value)
        theirs = native_verdict(native, name, value)
        assert ours is not None and theirs is not None, (name, value, ours, theirs)
        # Both say the same thing, up to how each writes the value: "<name> must be <what>".
        said = ours.split(", got")[0]
        assert rule["what"] in said or said.startswith(f"{name}[")
        if name in WHOLE_TYPE_RANGE:
            assert theirs.startswith("invalid argument"), (name, value, theirs)
        else:
            assert said in theirs, (name, value, ours, theirs)


def _token_ids(native: Any, params: dict[str, Any]) -> list[int]:
    return [t for chunk in native.generate("m", PROMPT, {"ignore_eos": True, **params}, 60.0) for t in chunk.token_ids]


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-38, 1e-21])
def test_a_positive_temperature_too_small_for_float32_samples_the_greedy_tokens(native: Any, temperature: float) -> None:
    # logits / T leaves float32 (or T rounds to 0 in it): the sampler must not turn that into NaN probabilities.
    greedy = _token_ids(native, {"temperature": 0.0})
    assert len(greedy) >= 4
    assert _token_ids(native, {"temperature": temperature, "seed": 3}) == greedy
