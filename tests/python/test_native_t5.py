"""The native T5 encoder (cpp/src/models/t5, probe "t5.encoder") against
transformers' T5EncoderModel (the oracle): tiny random fp32 models built here in
several configurations, saved with save_pretrained or as Stable Diffusion 3's
prefixed single file, compared on last_hidden_state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mpool
import mpool.testing
from random_weights import tie_t5_embeddings

SD3_PREFIX = "text_encoders.t5xxl.transformer."
MAX_REL = 1e-4

# T5 v1.0 (relu, heads * d_kv == d_model), v1.1 / XXL (gated-gelu, heads * d_kv
# != d_model), and the other gated form transformers accepts; bucket counts and
# distances that put the test's 24 tokens in both the exact and the log buckets.
CONFIGS = {
    "relu_v1_0": dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, feed_forward_proj="relu",
                      relative_attention_num_buckets=32, relative_attention_max_distance=128),
    "gated_gelu_v1_1": dict(d_model=24, d_kv=10, num_heads=3, d_ff=40, num_layers=3, feed_forward_proj="gated-gelu",
                            relative_attention_num_buckets=8, relative_attention_max_distance=12),
    "gated_silu": dict(d_model=16, d_kv=6, num_heads=5, d_ff=24, num_layers=1, feed_forward_proj="gated-silu",
                       relative_attention_num_buckets=16, relative_attention_max_distance=20),
}


def tiny_t5(seed: int, **overrides):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=101, dropout_rate=0.0, layer_norm_epsilon=1e-6, **overrides)
    model = T5EncoderModel(config).eval()
    # Weights of a size that makes every term matter: the bias well beyond its
    # tiny default init, the norms away from 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
            elif "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return tie_t5_embeddings(model)  # what it saves is then what it runs


def inputs(batch: int = 3, n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 101, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    for row in range(1, batch):  # right padding of different lengths; row 0 full
        mask[row, n - 5 * row:] = 0
    return ids, mask


def reference(model, ids, mask=None) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()


def native(path: Path, ids, mask=None) -> np.ndarray:
    tensors = {"input_ids": ids.numpy()}
    if mask is not None:
        tensors["attention_mask"] = mask.numpy()
    return mpool.testing.probe("t5.encoder", tensors, path=str(path))["last_hidden_state"]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def save_single_file(model, d: Path, prefix: str = SD3_PREFIX, drop: tuple[str, ...] = ()) -> Path:
    d.mkdir()
    model.config.save_pretrained(d)
    tensors = {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in drop}
    save_file(tensors, d / "model.safetensors")
    return d


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoder_matches_transformers_with_and_without_padding_mask(tmp_path: Path, name: str) -> None:
    model = tiny_t5(1, **CONFIGS[name])
    model.save_pretrained(tmp_path / name)
    ids, mask = inputs()
    for m in (None, mask):
        ref = reference(model, ids, m)
        assert rel_err(native(tmp_path / name, ids, m), ref) <= MAX_REL, (name, m is None)


def test_one_layer_relative_bias_serves_every_layer_of_a_deep_encoder(tmp_path: Path) -> None:
    # Only block 0 stores the bias; six layers reuse it, over sequences longer than
    # max_distance (the last bucket).
    model = tiny_t5(2, d_model=16, d_kv=4, num_heads=2, d_ff=32, num_layers=6, feed_forward_proj="gated-gelu",
                    relative_attention_num_buckets=6, relative_attention_max_distance=5)
    model.save_pretrained(tmp_path / "m")
    ids, mask = inputs(batch=2, n=17, seed=3)
    assert rel_err(native(tmp_path / "m", ids, mask), reference(model, ids, mask)) <= MAX_REL


def test_a_single_token_sequence_matches_transformers(tmp_path: Path) -> None:
    model = tiny_t5(3, **CONFIGS["gated_gelu_v1_1"])
    model.save_pretrained(tmp_path / "m")
    ids = torch.tensor([[7], [100]])
    assert rel_err(native(tmp_path / "m", ids), reference(model, ids)) <= MAX_REL


def test_sd3_single_file_with_prefixed_tensors_loads_and_matches(tmp_path: Path) -> None:
    model = tiny_t5(4, **CONFIGS["gated_gelu_v1_1"])
    d = save_single_file(model, tmp_path / "sd3")
    ids, mask = inputs(seed=4)
    assert rel_err(native(d, ids, mask), reference(model, ids, mask)) <= MAX_REL


def test_encoder_embed_tokens_stands_in_when_shared_weight_is_absent(tmp_path: Path) -> None:
    model = tiny_t5(5, **CONFIGS["relu_v1_0"])
    d = save_single_file(model, tmp_path / "m", prefix="", drop=("shared.weight",))
    ids, mask = inputs(seed=5)
    assert rel_err(native(d, ids, mask), reference(model, ids, mask)) <= MAX_REL


def test_shared_weight_stands_in_when_embed_tokens_is_absent(tmp_path: Path) -> None:
    model = tiny_t5(7, **CONFIGS["relu_v1_0"])
    d = save_single_file(model, tmp_path / "m", prefix="", drop=("encoder.embed_tokens.weight",))
    ids, mask = inputs(seed=7)
    assert rel_err(native(d, ids, mask), reference(model, ids, mask)) <= MAX_REL


def test_an_untied_encoder_table_is_the_one_the_encoder_runs(tmp_path: Path) -> None:
    # shared and encoder.embed_tokens stored and different: transformers' encoder
    # looks ids up in its own table, and so must mpool.
    model = tiny_t5(8, **CONFIGS["gated_gelu_v1_1"])
    own = torch.nn.Embedding(101, CONFIGS["gated_gelu_v1_1"]["d_model"])
    with torch.no_grad():
        own.weight.normal_(0.0, 0.3)
    model.encoder.embed_tokens = own
    d = save_single_file(model, tmp_path / "m", prefix="")
    ids, mask = inputs(seed=8)
    assert not torch.equal(model.shared.weight, model.encoder.embed_tokens.weight)
    assert rel_err(native(d, ids, mask), reference(model, ids, mask)) <= MAX_REL


def test_missing_tensor_is_invalid_input_naming_the_full_tensor(tmp_path: Path) -> None:
    model = tiny_t5(6, **CONFIGS["gated_gelu_v1_1"])
    missing = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    d = save_single_file(model, tmp_path / "m", drop=(missing,))
    ids, _ = inputs()
    with pytest.raises(mpool.InvalidInput, match="no tensor '" + SD3_PREFIX + missing + "'"):
        native(d, ids)


def test_missing_relative_attention_bias_is_invalid_input_naming_it(tmp_path: Path) -> None:
    model = tiny_t5(7, **CONFIGS["relu_v1_0"])
    missing = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    d = save_single_file(model, tmp_path / "m", prefix="", drop=(missing,))
    with pytest.raises(mpool.InvalidInput, match="no tensor '" + missing + "'"):
        native(d, inputs()[0])


def test_checkpoint_without_a_t5_encoder_lists_the_prefixes_tried(tmp_path: Path) -> None:
    model = tiny_t5(8, **CONFIGS["relu_v1_0"])
    d = save_single_file(model, tmp_path / "m", prefix="text_encoders.clip_l.transformer.")
    tried = r"tried the prefixes '', 'text_encoders\.t5xxl\.transformer\.'\); is this a T5 encoder"
    with pytest.raises(mpool.InvalidInput, match=tried):
        native(d, inputs()[0])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("feed_forward_proj", "gelu-new", "config.json: \"feed_forward_proj\" is 'gelu-new'"),
        ("num_heads", 0, "config.json: \"num_heads\" is 0"),
        ("relative_attention_num_buckets", 2, "config.json: \"relative_attention_num_buckets\" is 2"),
        ("layer_norm_epsilon", -1.0, "config.json: \"layer_norm_epsilon\" must be a positive finite number"),
    ],
)
def test_bad_config_value_is_invalid_input_naming_the_key(tmp_path: Path, key: str, value, message: str) -> None:
    model = tiny_t5(9, **CONFIGS["relu_v1_0"])
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config[key] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(mpool.InvalidInput, match=message.replace("(", r"\(")):
        native(tmp_path / "m", inputs()[0])


def test_bad_inputs_are_invalid_input_not_a_crash(tmp_path: Path) -> None:
    model = tiny_t5(10, **CONFIGS["relu_v1_0"])
    model.save_pretrained(tmp_path / "m")
    ids, mask = inputs()
    bad = ids.clone()
    bad[0, 0] = 101
    with pytest.raises(mpool.InvalidInput, match=r"input_ids must be in \[0, 101\)"):
        native(tmp_path / "m", bad)
    with pytest.raises(mpool.InvalidInput, match="must match input_ids"):
        native(tmp_path / "m", ids, mask[:, :5])
    empty_row = mask.clone()
    empty_row[1] = 0
    with pytest.raises(mpool.InvalidInput, match="keep at least one token"):
        native(tmp_path / "m", ids, empty_row)
    with pytest.raises(mpool.InvalidInput, match="input_ids must be"):
        native(tmp_path / "m", ids[0])


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_tracks_transformers_half_precision_load(tmp_path: Path, dtype: str, torch_dtype) -> None:
    # Both in half precision against the fp32 model: the native error is within
    # twice transformers' own, and near transformers' output (float16 keeps wo in
    # float32 in both; bfloat16 differs by gelu_new's rounding, computed op by op
    # in bfloat16 by transformers).
    from transformers import T5EncoderModel

    model = tiny_t5(11, **CONFIGS["gated_gelu_v1_1"])
    model.save_pretrained(tmp_path / "m")
    # Both lookup tables stored, so transformers' load does not depend on its
    # tying (a long test process has loaded this checkpoint with the encoder's
    # table left on the meta device).
    stored = load_file(tmp_path / "m" / "model.safetensors")
    stored.setdefault("encoder.embed_tokens.weight", stored["shared.weight"].clone())
    save_file(stored, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    ids, mask = inputs(seed=11)
    exact = reference(model, ids, mask)
    half = T5EncoderModel.from_pretrained(tmp_path / "m", dtype=torch_dtype).eval()
    assert half.encoder.embed_tokens.weight.device.type == "cpu"
    with torch.no_grad():
        theirs = half(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
    ours = mpool.testing.probe(
        "t5.encoder", {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, path=str(tmp_path / "m"), dtype=dtype
    )["last_hidden_state"].astype(np.float32)
    theirs_err = rel_err(theirs, exact)
    assert rel_err(ours, exact) <= 2 * theirs_err
    # Near transformers' own half-precision output, on the scale of its own error
    # (measured 3e-2 / 3e-3; its kernels' rounding varies between processes).
    assert rel_err(ours, theirs) <= 3 * theirs_err
