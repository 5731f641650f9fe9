"""Tiny random FLUX.1 pipelines built with diffusers and transformers: what the
native flux family loads and the oracle it is compared with. Nothing is
downloaded."""

from __future__ import annotations

from typing import Any

import torch

from random_weights import randomize, tie_t5_embeddings
from sd3_models import t5_tokenizer


def transformer_config(dev: bool, **overrides: Any) -> dict[str, Any]:
    config = dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=dev,
        axes_dims_rope=[4, 6, 6],
    )
    config.update(overrides)
    return config


def flux_pipeline(*, dev: bool, seed: int = 0, img2img: bool = False, scale: float = 0.12,
                  transformer: dict[str, Any] | None = None, clip: dict[str, Any] | None = None,
                  t5: dict[str, Any] | None = None, vae: dict[str, Any] | None = None, randomized: bool = True):
    """A tiny random FluxPipeline (or FluxImg2ImgPipeline): CLIP-L (CLIPTextModel),
    T5, a FLUX transformer (guidance embedding when ``dev``), a 4-channel VAE with
    FLUX's scaling and shift (the transformer takes its latents packed 2x2), and
    the scheduler each variant publishes (schnell: static shift 1; dev:
    resolution-dependent shift). The dicts override the components' sizes."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from two_tower_models import clip_tokenizer

    rand = randomize if randomized else (lambda module, seed, scale=0.0: module.eval())
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok.model_max_length = 77
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    sizes = transformer_config(dev, **(transformer or {}))
    clip_config = dict(
        vocab_size=len(tok), hidden_size=sizes["pooled_projection_dim"], intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
    )
    clip_config.update(clip or {})
    t5_tok = t5_tokenizer()
    t5_config = dict(vocab_size=len(t5_tok), d_model=sizes["joint_attention_dim"], d_kv=8, d_ff=40, num_layers=2,
                     num_heads=3, feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)
    t5_config.update(t5 or {})
    autoencoder = dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 16], layers_per_block=1,
        latent_channels=sizes["in_channels"] // 4, norm_num_groups=4, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
    autoencoder.update(vae or {})
    if dev:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    components = dict(
        scheduler=scheduler,
        vae=rand(AutoencoderKL(**autoencoder), seed + 1),
        text_encoder=rand(CLIPTextModel(CLIPTextConfig(**clip_config)), seed + 2),
        tokenizer=tok,
        text_encoder_2=tie_t5_embeddings(rand(T5EncoderModel(T5Config(**t5_config)), seed + 3)),
        tokenizer_2=t5_tok,
        transformer=rand(FluxTransformer2DModel(**sizes), seed + 4, scale=scale),
    )
    return (FluxImg2ImgPipeline if img2img else FluxPipeline)(**components)
