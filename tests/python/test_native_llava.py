"""The native LLaVA family (LLaVA-1.5 and LLaVA-NeXT) against transformers on tiny random models.

Each model is a LlavaForConditionalGeneration built in the test (llava_models.py):
a CLIP vision tower under a Llama or Qwen2 language model, saved with a
LlavaProcessor (an ``<image>`` token, CLIPImageProcessor settings, a chat
template). The oracle's inputs are made by the HF processor from the prompt the
pool renders, so tokenization, image-token expansion, preprocessing, the vision
tower, the projector, the merge and the decoder are all compared.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import mpool
import mpool.testing
from llava_models import TEXT_ARCHS, build_llava, build_llava_next, save_with_prefixed_names, synthetic_image

N_TOKENS = 32
IMAGES = [synthetic_image(1, 40, 52), synthetic_image(2, 64, 48), synthetic_image(3, 33, 33)]
QUERIES = ["What is in the picture?", "Describe the colors.", "Count: one two three"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llava")
    out = {text: build_llava(root, text) for text in TEXT_ARCHS}
    # Two feature layers concatenated, the class token kept, another projector activation.
    out["layers_full"] = build_llava(
        root, "llama", name="layers_full", seed=1, vision_feature_layer=[-3, -1],
        vision_feature_select_strategy="full", projector_hidden_act="gelu_pytorch_tanh",
    )
    out["prefixed"] = save_with_prefixed_names(out["llama"], root / "prefixed")
    out["no_template"] = build_llava(root, "llama", name="no_template", chat_template=None)
    out["next"] = build_llava_next(root, "llama")
    out["next_prefixed"] = save_with_prefixed_names(out["next"], root / "next_prefixed")
    out["next_qwen2"] = build_llava_next(root, "qwen2", seed=2)
    return out


def one_turn(query: str, images: int = 1) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": query}]}]


def hf_inputs(path: Path, images: list[np.ndarray], prompt: str) -> Any:
    processor = transformers.AutoProcessor.from_pretrained(str(path))
    return processor(images=images, text=prompt, return_tensors="pt")


def hf_model(path: Path) -> Any:
    return transformers.AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval()


def hf_generate(path: Path, images: list[np.ndarray], prompt: str, n: int = N_TOKENS) -> tuple[list[int], int]:
    """transformers' greedy tokens for the processor's inputs, and the prompt's length."""
    model = hf_model(path)
    inputs = hf_inputs(path, images, prompt)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=n, eos_token_id=None)
    length = int(inputs["input_ids"].shape[1])
    return [int(t) for t in out[0, length:]], length


def run(stream: mpool.TextStream) -> tuple[list[int], str, list[Any]]:
    ids: list[int] = []
    text = ""
    chunks = []
    for chunk in stream:
        ids.extend(chunk.token_ids)
        text += chunk.text
        chunks.append(chunk)
    return ids, text, chunks


GREEDY = dict(max_tokens=N_TOKENS, temperature=0, ignore_eos=True)


# --- parity with transformers ------------------------------------------------------


@pytest.mark.parametrize("text", TEXT_ARCHS)
def test_greedy_describe_is_token_identical_to_transformers_generate_for_32_tokens(
    pool: mpool.Pool, models: dict[str, Path], text: str
) -> None:
    pool.register("v", models[text])
    for image, query in zip(IMAGES, QUERIES):
        prompt = pool.render_chat("v", one_turn(query))
        expected, length = hf_generate(models[text], [image], prompt)
        ours, _, chunks = run(pool.describe("v", image, query, **GREEDY))
        assert ours == expected
        assert chunks[-1].stats.prompt_tokens == length  # bos + text + 25 image positions, as the processor makes it


def test_projector_output_and_merged_embeddings_match_transformers_within_1e4(models: dict[str, Path]) -> None:
    path = models["llama"]
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(path))
    prompt = processor.apply_chat_template(one_turn("two images", 2), add_generation_prompt=True)
    inputs = processor(images=IMAGES[:2], text=prompt, return_tensors="pt")
    out = mpool.testing.probe(
        "llava.features",
        {"pixel_values": inputs["pixel_values"].numpy(), "input_ids": inputs["input_ids"].numpy()},
        path=str(path),
    )
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        ).pooler_output
        features = torch.stack(list(features))
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        mask = (inputs["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        merged = embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))[0]
    assert out["image_features"].shape == tuple(features.shape) == (2, 25, 64)
    rel = np.abs(out["image_features"] - features.numpy()).max() / np.abs(features.numpy()).max()
    assert rel <= 1e-4
    assert out["inputs_embeds"].shape == tuple(merged.shape)
    assert np.abs(out["inputs_embeds"] - merged.numpy()).max() / np.abs(merged.numpy()).max() <= 1e-4


def test_feature_layer_list_with_the_class_token_kept_matches_transformers(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    path = models["layers_full"]
    pool.register("v", path)
    prompt = pool.render_chat("v", one_turn(QUERIES[0]))
    expected, length = hf_generate(path, [IMAGES[0]], prompt)
    ours, _, chunks = run(pool.describe("v", IMAGES[0], QUERIES[0], **GREEDY))
    assert ours == expected
    assert chunks[-1].stats.image_tokens == 26  # 25 patches + the class token under "full"
    assert chunks[-1].stats.prompt_tokens == length


def test_transformers_module_tensor_names_load_like_the_original_checkpoint_names(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("original", models["llama"])
    pool.register("prefixed", models["prefixed"])
    a = run(pool.describe("original", IMAGES[1], QUERIES[1], **GREEDY))[0]
    b = run(pool.describe("prefixed", IMAGES[1], QUERIES[1], **GREEDY))[0]
    assert a == b


def test_two_images_in_one_chat_match_transformers(pool: mpool.Pool, models: dict[str, Path]) -> None:
    path = models["qwen2"]
    pool.register("v", path)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": IMAGES[0]}, {"type": "text", "text": "first"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a gradient"}]},
        {"role": "user", "content": [{"type": "text", "text": "and this one?"}, {"type": "image", "image": IMAGES[2]}]},
    ]
    plain = [{**m, "content": [{k: v for k, v in p.items() if k != "image"} for p in m["content"]]} for m in messages]
    prompt = pool.render_chat("v", plain)
    assert prompt.count("<image>") == 2
    expected, length = hf_generate(path, [IMAGES[0], IMAGES[2]], prompt)
    ours, _, chunks = run(pool.chat("v", messages, **GREEDY))
    assert ours == expected
    assert chunks[-1].stats.image_tokens == 50 and chunks[-1].stats.prompt_tokens == length


def test_a_llava_model_also_generates_text_without_images_like_transformers(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    info = pool.register("v", models["llama"])
    assert sorted(info["capabilities"]) == ["text_to_text", "vision"]
    tok = transformers.AutoTokenizer.from_pretrained(str(models["llama"]))
    ids = tok("Once upon a time")["input_ids"]
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(models["llama"]), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=None)
    ours = run(pool.generate("v", "Once upon a time", max_tokens=16, temperature=0, ignore_eos=True))[0]
    assert ours == [int(t) for t in out[0, len(ids) :]]
    # A chat without image parts is plain text generation.
    assert run(pool.chat("v", [{"role": "user", "content": "hi"}], max_tokens=4, temperature=0))[2][-1].stats.image_tokens == 0


@pytest.mark.parametrize("content", ["Once upon a time", [{"type": "text", "text": "Once upon a time"}]], ids=["str", "parts"])
def test_a_text_only_chat_is_tokenized_as_the_processor_s_apply_chat_template_does(
    pool: mpool.Pool, models: dict[str, Path], content: Any
) -> None:
    # The processor tokenizes a chat without images as one with them: with bos, which
    # llava-hf's templates do not write.
    path = models["llama"]
    pool.register("v", path)
    messages = [{"role": "user", "content": content}]
    processor = transformers.AutoProcessor.from_pretrained(str(path))
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = hf_model(path).generate(**inputs, do_sample=False, max_new_tokens=N_TOKENS, eos_token_id=None)
    length = int(inputs["input_ids"].shape[1])
    ours, _, chunks = run(pool.chat("v", messages, **GREEDY))
    assert chunks[-1].stats.prompt_tokens == length
    assert ours == [int(t) for t in out[0, length:]]


def test_an_explicit_prompt_is_tokenized_with_bos_as_the_processor_does(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("v", models["llama"])
    prompt = "USER: <image>\nWhat is it?\nASSISTANT:"
    expected, length = hf_generate(models["llama"], [IMAGES[2]], prompt)
    ours, _, chunks = run(pool.describe("v", IMAGES[2], prompt=prompt, **GREEDY))
    assert ours == expected and chunks[-1].stats.prompt_tokens == length


# --- LLaVA-NeXT: any-resolution tiles -------------------------------------------------

# Aspect ratios that pick different grids (2x1, 1x2, 1x3) and unpad rows or columns.
NEXT_IMAGES = [synthetic_image(4, 40, 52), synthetic_image(5, 70, 30), synthetic_image(6, 33, 100)]


def test_next_tiles_equal_the_llava_next_image_processors_pixel_values(models: dict[str, Path]) -> None:
    processor = transformers.AutoProcessor.from_pretrained(str(models["next"]))
    for image in NEXT_IMAGES:
        ours = mpool.testing.probe("llava.anyres_tiles", {"image": image}, path=str(models["next"]))["pixel_values"]
        theirs = processor.image_processor(images=[image], return_tensors="np")["pixel_values"][0]
        assert ours.shape[0] >= 3
        np.testing.assert_allclose(ours, theirs[: ours.shape[0]], rtol=0, atol=1e-6)
        assert not theirs[ours.shape[0] :].any()  # the rest is the batch's padding


@pytest.mark.parametrize("key", ["next", "next_qwen2"])
def test_next_greedy_describe_is_token_identical_to_transformers_for_three_aspect_ratios(
    pool: mpool.Pool, models: dict[str, Path], key: str
) -> None:
    pool.register("v", models[key])
    for image, query in zip(NEXT_IMAGES, QUERIES):
        prompt = pool.render_chat("v", one_turn(query))
        expected, length = hf_generate(models[key], [image], prompt)
        ours, _, chunks = run(pool.describe("v", image, query, **GREEDY))
        assert ours == expected
        assert chunks[-1].stats.prompt_tokens == length  # the processor's count of packed features


def test_next_packed_features_and_merged_embeddings_match_transformers_within_1e4(models: dict[str, Path]) -> None:
    path = models["next"]
    model = hf_model(path)
    processor = transformers.AutoProcessor.from_pretrained(str(path))
    prompt = processor.apply_chat_template(one_turn("two", 2), add_generation_prompt=True)
    inputs = processor(images=NEXT_IMAGES[1:], text=prompt, return_tensors="pt")
    out = mpool.testing.probe(
        "llava.features",
        {k: inputs[k].numpy() for k in ("pixel_values", "image_sizes", "input_ids")},
        path=str(path),
    )
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        ).pooler_output
        features = torch.cat(list(features))
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        mask = (inputs["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        merged = embeds.masked_scatter(mask, features)[0]
    assert out["image_features"].shape == tuple(features.shape)
    assert np.abs(out["image_features"] - features.numpy()).max() / np.abs(features.numpy()).max() <= 1e-4
    assert np.abs(out["inputs_embeds"] - merged.numpy()).max() / np.abs(merged.numpy()).max() <= 1e-4


def test_next_two_images_in_one_chat_and_both_tensor_layouts_match_transformers(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("v", models["next"])
    pool.register("prefixed", models["next_prefixed"])
    messages = [{"role": "user", "content": [
        {"type": "image", "image": NEXT_IMAGES[0]}, {"type": "image", "image": NEXT_IMAGES[2]},
        {"type": "text", "text": "compare"}]}]
    prompt = pool.render_chat("v", one_turn("compare", 2))
    expected, _ = hf_generate(models["next"], [NEXT_IMAGES[0], NEXT_IMAGES[2]], prompt)
    assert run(pool.chat("v", messages, **GREEDY))[0] == expected
    assert run(pool.chat("prefixed", messages, **GREEDY))[0] == expected


# --- streaming, cancellation, concurrency, stats --------------------------------------


def test_closing_a_describe_stream_mid_generation_frees_the_replica(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("v", models["llama"], max_replicas=1)
    stream = pool.describe("v", IMAGES[0], QUERIES[0], max_tokens=200, temperature=0, ignore_eos=True)
    first = [next(stream) for _ in range(3)]
    assert all(c.finish_reason is None for c in first)
    stream.close()
    assert stream.finish_reason == "cancelled"
    out = run(pool.describe("v", IMAGES[1], QUERIES[1], max_tokens=5, temperature=0, ignore_eos=True, timeout=10))[0]
    assert len(out) == 5


def test_two_concurrent_describes_on_different_images_each_equal_their_solo_runs(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("v", models["qwen2"], max_replicas=2)
    solo = [run(pool.describe("v", IMAGES[i], QUERIES[i], **GREEDY))[0] for i in range(2)]
    results: list[Any] = [None, None]

    def worker(i: int) -> None:
        results[i] = run(pool.describe("v", IMAGES[i], QUERIES[i], **GREEDY))[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo and solo[0] != solo[1]


def test_final_stats_report_the_image_tokens_and_a_nonnegative_image_time(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("v", models["llama"])
    stream = pool.describe("v", IMAGES[0], QUERIES[0], max_tokens=3, temperature=0)
    run(stream)
    assert stream.stats.image_tokens == 25
    assert stream.stats.image_time_s >= 0.0
    assert "image_tokens=25" in repr(stream.stats)


def test_memory_estimate_is_all_weights_plus_the_kv_cache_of_the_context(pool: mpool.Pool, models: dict[str, Path]) -> None:
    small = pool.register("a", models["llama"], context_length=64)
    large = pool.register("b", models["llama"], context_length=192)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(models["llama"]), dtype=torch.float32)
    params = sum(t.numel() for t in model.state_dict().values())
    assert small["weight_mb"] == pytest.approx(params * 4 / 2**20, rel=1e-6)  # tower, projector and decoder
    cfg = model.config.text_config
    kv = 128 * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4 / 2**20
    grown = large["memory_mb"] - small["memory_mb"]
    assert kv <= grown <= kv + 128 * 512 * cfg.num_attention_heads * 4 / 2**20  # + the prefill chunk's scores


def test_cli_describe_streams_the_greedy_text(models: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    from PIL import Image

    image = tmp_path / "picture.png"
    Image.fromarray(IMAGES[0]).save(image)
    with mpool.Pool() as p:
        p.register("v", models["llama"])
        expected = run(p.describe("v", str(image), "What is it?", max_tokens=12, temperature=0))[1]
    out = subprocess.run(
        [sys.executable, "-m", "mpool", "describe", "--model", str(models["llama"]), "--max-tokens", "12",
         str(image), "What is it?"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout == expected + "\n"


# --- bad input ---------------------------------------------------------------------------


def test_bad_vision_inputs_get_typed_errors_and_the_pool_stays_healthy(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    from decoder_models import build_decoder

    pool.register("v", models["llama"])
    pool.register("plain", models["no_template"])
    pool.register("text", build_decoder(tmp_path, "llama"))
    with pytest.raises(mpool.InvalidInput, match="image #0"):
        run(pool.describe("v", b"\x89PNG\r\n\x1a\n not really a png", "what?"))
    with pytest.raises(mpool.InvalidInput, match="no chat template"):
        run(pool.describe("plain", IMAGES[0], "what?"))
    # More images than placeholders, and the reverse.
    with pytest.raises(mpool.InvalidInput, match="has 0 image placeholders .* but 1 image was given"):
        run(pool.describe("v", IMAGES[0], prompt="USER: what? ASSISTANT:"))
    with pytest.raises(mpool.InvalidInput, match="has 2 image placeholders .* but 1 image was given"):
        run(pool.describe("v", IMAGES[0], prompt="USER: <image> and <image>? ASSISTANT:"))
    with pytest.raises(mpool.InvalidInput, match="'text' does not serve vision"):
        run(pool.describe("text", IMAGES[0], "what?"))
    with pytest.raises(mpool.InvalidInput, match="exactly one"):
        pool.describe("v", IMAGES[0], "what?", prompt="USER: <image> ASSISTANT:")
    with pytest.raises(mpool.InvalidInput, match=r"messages\[0\]\.content\[0\] is an image part"):
        pool.chat("v", [{"role": "user", "content": [{"type": "image"}]}])
    # The pool is healthy: the same model still answers.
    assert len(run(pool.describe("v", IMAGES[1], "ok?", max_tokens=4, temperature=0, ignore_eos=True))[0]) == 4


def test_describes_and_text_requests_joining_one_batch_each_equal_their_solo_runs(models: dict[str, Path]) -> None:
    """Vision requests get their image prompt when they join a replica's running
    batch; they run beside text requests, each with its solo output. An unread
    long stream holds the batch open (see test_continuous_batching.py)."""
    with mpool.Pool() as pool:
        pool.register("v", models["llama"], max_replicas=1, options={"kv_cache_tokens": 4096})
        text_prompt = [5, 9, 33, 71, 120]
        solo_vision = [run(pool.describe("v", IMAGES[i], QUERIES[i], **GREEDY)) for i in range(3)]
        solo_text = run(pool.generate("v", text_prompt, **GREEDY))
        anchor = pool.describe("v", IMAGES[2], QUERIES[0], max_tokens=200, temperature=0, ignore_eos=True, timeout=120)
        next(anchor)  # unread from here on: it pauses and keeps the batch open
        streams = [pool.describe("v", IMAGES[i], QUERIES[i], timeout=120, **GREEDY) for i in range(3)]
        text = pool.generate("v", text_prompt, timeout=120, **GREEDY)
        batched = [run(s) for s in streams]
        assert [b[:2] for b in batched] == [s[:2] for s in solo_vision]
        assert [b[2][-1].stats.image_tokens for b in batched] == [25, 25, 25]
        assert run(text)[:2] == solo_text[:2]
        assert pool.stats()["models"]["v"]["running"] >= 1  # the anchor is still in its batch
        run(anchor)
