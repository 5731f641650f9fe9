"""Tiny random-weight decoder models saved as HF directories: the oracle for the
native decoder's parity tests.

`build_decoder(tmp_dir, arch)` writes config.json, model.safetensors,
generation_config.json, tokenizer.json and tokenizer_config.json (with a chat
template) and returns the directory. `build_embedder(tmp_dir)` saves a decoder
as a sentence-transformers model with last-token pooling and Normalize.
`ARCHS` lists the supported `arch` values; `MOE_ARCHS` the mixture-of-experts
ones (Qwen2-MoE, Qwen3-MoE) and `DEEPSEEK_ARCHS` DeepSeek-V3's (latent attention,
grouped sigmoid routing), which `build_decoder` builds the same way. All models share one byte-level BPE
tokenizer, trained once per process. See DECODER_NOTES.md for what each variant
exercises in transformers.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
BOS, EOS, PAD, END = "<s>", "</s>", "<pad>", "<|end|>"
VOCAB_SIZE = 400

# Phi-3 style; every model dir carries it in tokenizer_config.json.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How's it going? I'm fine, they've said we'll see.",
    "A tiny model generates a few tokens, one at a time, from a prompt.",
    "The cache keeps keys and values so that each step only reads the new token.",
    "Rotary position embeddings rotate pairs of dimensions by an angle.",
    "Once upon a time there was a small language model that liked to count: one two three four five.",
    "def generate(prompt, max_tokens=64):\n    return model(prompt)[:max_tokens]",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "Numbers 0123456789 and prices $12.50, 3.14159, 2024-05-17.",
    "東京は日本の首都です。我爱自然语言处理，今天天气很好。",
    "한국어 문장도 포함됩니다. カタカナとひらがな",
    "مرحبا بالعالم، كيف حالك اليوم؟ नमस्ते दुनिया",
    "Emoji: 😀 😃 👍🏽 👩‍💻 🎉 ❤️ 🚀 and café naïve résumé Ångström",
    "Ελληνικά γράμματα και русский текст тоже здесь.",
    "   leading spaces, tabs\tand\nnew lines\n\n",
    "The user asked a question and the assistant answered it politely.",
    "System: you are a helpful assistant. User: what is the capital of France? Assistant: Paris.",
]


def tokenizer_corpus() -> list[str]:
    """The in-code training corpus, repeated with small variations."""
    out: list[str] = []
    for i in range(8):
        for j, text in enumerate(_CORPUS):
            out.append(text if (i + j) % 3 else text.lower())
            out.append(f"{text} {i * 7 + j}")
    return out


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok.to_str()


def shared_tokenizer() -> Any:
    """A fresh `tokenizers.Tokenizer` (trained once per process)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_tokenizer_json())


def special_ids() -> dict[str, int]:
    tok = shared_tokenizer()
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def vocab_size() -> int:
    return int(shared_tokenizer().get_vocab_size())


def save_tokenizer(model_dir: Path, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """Writes tokenizer.json + tokenizer_config.json (chat template inside it, old style)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=shared_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        unk_token="<unk>",
        pad_token=PAD,
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", END],
    )
    fast.save_pretrained(str(model_dir))
    # transformers 5 writes the template to chat_template.jinja; real checkpoints mostly
    # carry it in tokenizer_config.json, which is what we exercise here.
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("chat_template", None)
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------

_BASE: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    hidden_act="silu",
    initializer_range=0.2,
    tie_word_embeddings=False,
)

# arch -> (model class name, config class name, config overrides)
_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "llama3_rope": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        ),
    ),
    "llama_linear_rope": ("LlamaForCausalLM", "LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama_dynamic_rope": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=40),
    ),
    "llama_yarn_rope": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
            }
        ),
    ),
    "qwen2_yarn_mscale": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 64,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
                "truncate": False,
            }
        ),
    ),
    "llama_tied": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True)),
    "llama_bias": ("LlamaForCausalLM", "LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "mistral_sliding": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=8)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(rope_theta=1000000.0)),
    "qwen2_sliding": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    ),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=32, num_hidden_layers=3)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(original_max_position_embeddings=256, rms_norm_eps=1e-5)),
    "phi3_longrope": (
        "Phi3ForCausalLM",
        "Phi3Config",
        dict(
            partial_rotary_factor=0.75,
            original_max_position_embeddings=32,
            # rotary dim = 16 * 0.75 = 12 -> 6 factors each
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0],
            },
            rms_norm_eps=1e-5,
        ),
    ),
}
ARCHS = tuple(_ARCHS)

_MOE: dict[str, Any] = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)

# Mixture-of-experts variants: each has a dense layer between MoE layers, from
# mlp_only_layers or decoder_sparse_step.
_MOE_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen3_moe": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        dict(_MOE, num_hidden_layers=3, mlp_only_layers=[1], norm_topk_prob=True, rope_theta=1000000.0),
    ),
    "qwen3_moe_unnormalized": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        dict(_MOE, num_hidden_layers=4, decoder_sparse_step=2, norm_topk_prob=False, head_dim=32),
    ),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        dict(_MOE, num_hidden_layers=3, mlp_only_layers=[1], shared_expert_intermediate_size=48),
    ),
}
MOE_ARCHS = tuple(_MOE_ARCHS)

# DeepSeek-V3: 8 experts in 4 groups, 3 per token from the 2 best groups, two
# shared experts, a dense first layer; v_head_dim differs from the q/k head.
_DEEPSEEK: dict[str, Any] = dict(
    num_hidden_layers=3,
    num_key_value_heads=4,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    n_group=4,
    topk_group=2,
    num_experts_per_tok=3,
    moe_intermediate_size=32,
    n_shared_experts=2,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
)
_DEEPSEEK_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "deepseek_v3": ("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(_DEEPSEEK)),
    # q straight from q_proj, rotate-half rope, attention biases, unnormalised weights.
    "deepseek_v3_no_q_lora": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        dict(_DEEPSEEK, q_lora_rank=None, rope_interleave=False, attention_bias=True, norm_topk_prob=False),
    ),
    # yarn with mscale and mscale_all_dim: scaled cos/sin and a corrected softmax scale.
    "deepseek_v3_yarn": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        dict(
            _DEEPSEEK,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "mscale": 1.0,
                "mscale_all_dim": 0.7,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
            },
        ),
    ),
}
DEEPSEEK_ARCHS = tuple(_DEEPSEEK_ARCHS)


def _reinit_(model: Any, seed: int) -> None:
    """Random, large-ish weights so logits are far from flat; norms and biases too."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen: set[int] = set()
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.data_ptr() in seen:  # tied lm_head
                continue
            seen.add(p.data_ptr())
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.6 / fan_in**0.5))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek's routing bias
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def _make_model(arch: str, seed: int, overrides: dict[str, Any]) -> Any:
    import torch
    import transformers

    archs = {**_ARCHS, **_MOE_ARCHS, **_DEEPSEEK_ARCHS}
    if arch not in archs:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS + MOE_ARCHS + DEEPSEEK_ARCHS}")
    model_cls_name, config_cls_name, arch_cfg = archs[arch]
    ids = special_ids()
    cfg_kwargs: dict[str, Any] = {**_BASE, **arch_cfg, **overrides}
    cfg_kwargs.update(
        vocab_size=vocab_size(),
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    config = getattr(transformers, config_cls_name)(**cfg_kwargs)
    config.dtype = torch.float32
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls_name)(config).to(torch.float32).eval()
    if config.tie_word_embeddings:
        # Tie explicitly: whether the constructor ties depends on process-wide
        # transformers state that other tests (loading models) can leave behind.
        model.lm_head.weight = model.model.embed_tokens.weight
    _reinit_(model, seed=hash_seed(arch, seed))
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def build_decoder(
    tmp_dir: Path | str,
    arch: str,
    *,
    seed: int = 0,
    name: str | None = None,
    legacy_config: bool = False,
    **overrides: Any,
) -> Path:
    """Builds the tiny `arch` model under tmp_dir/<name or arch> and returns that directory.

    `overrides` replace config fields (e.g. num_hidden_layers=3, sliding_window=4).
    transformers 5 writes RoPE settings as `rope_parameters` (with rope_theta inside);
    `legacy_config=True` rewrites config.json the way most hub checkpoints have it:
    top-level `rope_theta` and `rope_scaling` (absent for default RoPE).
    """
    from transformers import GenerationConfig

    model = _make_model(arch, seed, overrides)
    ids = special_ids()
    out = Path(tmp_dir) / (name or arch)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[EOS], ids[END]],
        pad_token_id=ids[PAD],
        do_sample=False,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(out)
    if legacy_config:
        _legacy_rope_config(out / "config.json")
    return out


def _legacy_rope_config(path: Path) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    rope = dict(cfg.pop("rope_parameters", None) or {})
    cfg["rope_theta"] = rope.pop("rope_theta", 10000.0)
    rope.pop("partial_rotary_factor", None)  # stays top-level (phi3)
    if rope.get("rope_type", "default") != "default":
        rope.setdefault("type", rope["rope_type"])
        cfg["rope_scaling"] = rope
    cfg.pop("layer_types", None)  # recomputed from use_sliding_window / max_window_layers
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def hash_seed(arch: str, seed: int) -> int:
    """A stable (not PYTHONHASHSEED-dependent) seed per arch."""
    h = seed
    for ch in arch:
        h = (h * 131 + ord(ch)) % (2**31 - 1)
    return h


def build_embedder(tmp_dir: Path | str, arch: str = "qwen2", *, seed: int = 0) -> Path:
    """The tiny `arch` decoder saved as a sentence-transformers model: last-token pooling + Normalize."""
    model = _make_model(arch, seed, {})
    out = Path(tmp_dir) / f"{arch}_embedder"
    out.mkdir(parents=True, exist_ok=True)
    # Like real decoder embedders (gte-Qwen2, Qwen3-Embedding): the base model only,
    # tensor names without the "model." prefix and no lm_head.
    model.model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(out)
    hidden = int(model.config.hidden_size)

    def write(rel: str, obj: Any) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    write(
        "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write("sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False})
    write(
        "1_Pooling/config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    write(
        "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "3.0.0"},
            "prompts": {"query": "query: ", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    return out
