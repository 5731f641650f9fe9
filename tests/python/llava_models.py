"""Tiny random LLaVA-1.5 models saved as HF directories with a LlavaProcessor
(tokenizer with an ``<image>`` token, CLIPImageProcessor settings, chat template):
what the native llava family loads, and the oracle it is compared with. A CLIP
vision tower under a Llama or Qwen2 language model; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoder_models import BOS, EOS, END, PAD, hash_seed, shared_tokenizer

IMAGE = "<image>"
IMAGE_SIZE = 30
PATCH = 6  # 5 x 5 = 25 patches per image

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), without bos:
# the processor's tokenizer adds it, as with the real checkpoints.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_TEXT: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"rope_theta": 1000000.0}),
}
TEXT_ARCHS = tuple(_TEXT)


def tokenizer() -> Any:
    """The decoder tests' byte-level BPE with ``<image>`` added as a special token."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=shared_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        unk_token="<unk>",
        pad_token=PAD,
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", END, IMAGE],
    )


def _reinit_(model: Any, seed: int) -> None:
    """Random weights large enough that greedy decoding is far from ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "layrnorm.weight", "layer_norm1.weight", "layer_norm2.weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "embedding" in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.6 / p.shape[-1] ** 0.5))


def build_llava(
    tmp_dir: Path | str,
    text: str = "llama",
    *,
    name: str | None = None,
    seed: int = 0,
    chat_template: str | None = CHAT_TEMPLATE,
    **overrides: Any,
) -> Path:
    """A random LlavaForConditionalGeneration under tmp_dir/<name or llava_<text>> with
    its LlavaProcessor; ``overrides`` replace LlavaConfig fields
    (vision_feature_layer, vision_feature_select_strategy, projector_hidden_act, ...)."""
    import transformers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer()
    image_id = tok.convert_tokens_to_ids(IMAGE)
    config_name, extra = _TEXT[text]
    text_config = getattr(transformers, config_name)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, hidden_act="silu",
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **extra,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=IMAGE_SIZE,
        patch_size=PATCH, hidden_act="quick_gelu", projection_dim=16,
    )
    settings: dict[str, Any] = dict(image_token_index=image_id, projector_hidden_act="gelu")
    settings.update(overrides)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, **settings)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    _reinit_(model, hash_seed(f"llava_{text}", seed))
    out = Path(tmp_dir) / (name or f"llava_{text}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=images, tokenizer=tok, patch_size=PATCH,
        vision_feature_select_strategy=config.vision_feature_select_strategy, num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    processor.save_pretrained(str(out))
    return out


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """An HWC uint8 image: smooth gradients plus noise, different per seed."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (3 + c + seed)) % 256 + (y * (5 - c)) % 97 for c in range(3)], axis=-1)
    return ((base + rng.randint(0, 60, size=(height, width, 3))) % 256).astype(np.uint8)


def save_with_prefixed_names(src: Path, dst: Path) -> Path:
    """A copy of ``src`` (which transformers saved with the original checkpoint names:
    vision_tower.*, multi_modal_projector.*, language_model.model.*,
    language_model.lm_head.weight) under the names of transformers 5's modules:
    model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*,
    lm_head.weight."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    assert "language_model.lm_head.weight" in tensors, "expected the original layout"
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("language_model.model."):
            key = "model.language_model." + key[len("language_model.model.") :]
        elif key == "language_model.lm_head.weight":
            key = "lm_head.weight"
        else:
            key = "model." + key
        renamed[key] = value
    save_file(renamed, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# LLaVA-NeXT: tiles of the tower's 30 pixels, grids of up to 3 tiles.
PINPOINTS = [[30, 60], [60, 30], [60, 60], [90, 30], [30, 90]]


def build_llava_next(tmp_dir: Path | str, text: str = "llama", *, name: str | None = None, seed: int = 0) -> Path:
    """A random LlavaNextForConditionalGeneration with its LlavaNextProcessor
    (LlavaNextImageProcessor settings with ``PINPOINTS``)."""
    import transformers
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = tokenizer()
    config_name, extra = _TEXT[text]
    text_config = getattr(transformers, config_name)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, hidden_act="silu",
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **extra,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=IMAGE_SIZE,
        patch_size=PATCH, hidden_act="quick_gelu", projection_dim=16,
    )
    config = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_grid_pinpoints=PINPOINTS,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).to(torch.float32).eval()
    _reinit_(model, hash_seed(f"llava_next_{text}", seed))
    out = Path(tmp_dir) / (name or f"llava_next_{text}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    images = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=images, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(out))
    return out
