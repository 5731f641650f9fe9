"""Tiny random Stable Diffusion 3 components written to disk with diffusers and
transformers: what the native sd3 family loads, and the oracles it is compared
with. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from random_weights import randomize


def mmdit_config(**overrides: Any) -> dict[str, Any]:
    config = dict(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=20,
        pos_embed_max_size=12,
    )
    config.update(overrides)
    return config


def save_mmdit(path: Path, seed: int = 0, **overrides: Any):
    """A random SD3Transformer2DModel saved at ``path``; returns it."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = randomize(SD3Transformer2DModel(**mmdit_config(**overrides)), seed, scale=0.15)
    model.save_pretrained(path)
    return model


def save_clip_text(path: Path, *, hidden: int, layers: int = 2, heads: int = 2, projection: int = 16,
                   act: str = "quick_gelu", seed: int = 0, positions: int = 77):
    """A random CLIPTextModelWithProjection (SD3's text_encoder / text_encoder_2)
    and the CLIP tokenizer at ``path``; returns (model, tokenizer)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from two_tower_models import clip_tokenizer

    tok = clip_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2 + 4, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=positions, hidden_act=act, projection_dim=projection,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = randomize(CLIPTextModelWithProjection(config), seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


T5_CORPUS = [
    "a photo of a cat sitting on a red chair",
    "the big blue house on the hill at night",
    "an astronaut riding a horse in a green field",
    "a bowl of fruit, oil painting, warm light",
    "two dogs playing in the snow near a tree",
]


def t5_tokenizer():
    """A T5TokenizerFast over a small Unigram model trained here (Metaspace, an
    appended </s>, <pad> = 0): the shape of SD3's tokenizer_3."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(T5_CORPUS * 4, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)


def sd3_pipeline(
    *,
    t5: bool = True,
    qk_norm: bool = False,
    dual: bool = False,
    layers: int = 3,
    seed: int = 0,
    clip_l: dict[str, Any] | None = None,
    clip_g: dict[str, Any] | None = None,
    t5_config: dict[str, Any] | None = None,
    mmdit: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    scale: float = 0.15,
    randomized: bool = True,
):
    """A tiny random StableDiffusion3Pipeline (CLIP-L, CLIP-G, optional T5, an MMDiT,
    a 16-channel-style VAE with SD3's scaling and shift, the flow-matching
    scheduler with shift 3). The dicts override the components' sizes (the
    benchmark builds a larger one with them); ``scale`` is the MMDiT's weight scale.
    ``randomized=False`` keeps the libraries' own random initialisation (what a
    larger model needs to stay finite)."""
    rand = randomize if randomized else (lambda module, seed, scale=0.0: module.eval())
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from two_tower_models import clip_tokenizer

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok.model_max_length = 77
    eos = tok.convert_tokens_to_ids("<|endoftext|>")

    def clip_text(hidden: int, act: str, s: int, sizes: dict[str, Any] | None):
        config = dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2 + 2, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=8,
            bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
        )
        config.update(sizes or {})
        return rand(CLIPTextModelWithProjection(CLIPTextConfig(**config)), s)

    t5_tok = t5_tokenizer()
    components: dict[str, Any] = dict(
        text_encoder=clip_text(12, "quick_gelu", seed + 1, clip_l), tokenizer=tok,
        text_encoder_2=clip_text(20, "gelu", seed + 2, clip_g), tokenizer_2=clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )
    components["tokenizer_2"].model_max_length = 77
    if t5:
        t5_sizes = dict(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=3,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)
        t5_sizes.update(t5_config or {})
        components["text_encoder_3"] = rand(T5EncoderModel(T5Config(**t5_sizes)), seed + 3)
        components["tokenizer_3"] = t5_tok
    transformer = dict(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16,
    )
    if qk_norm:
        transformer["qk_norm"] = "rms_norm"
    if dual:
        transformer["dual_attention_layers"] = [0, 1]
    transformer.update(mmdit or {})
    components["transformer"] = rand(SD3Transformer2DModel(**transformer), seed + 4, scale=scale)
    autoencoder = dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 16], layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    autoencoder.update(vae or {})
    components["vae"] = rand(AutoencoderKL(**autoencoder), seed + 5)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(**components)
