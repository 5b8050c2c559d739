"""Randomly initialised SDXL weights written in the Hugging Face Hub's file layout.

A lab's loader reads four Hub repos (SDXL base, SDXL-Lightning, the fp16-fix VAE,
IP-Adapter). :func:`write_random_sdxl` writes the same four repos with random weights,
at full size (the real architecture: the dry run of ``eegs bench generation
--full-size``) or tiny (tests), so that :meth:`SDXLBackend.from_pretrained` loads them
through exactly the lab's code path. The images are noise; every output says
``random-weights``.

The full-size UNet (2.6 B parameters) is built on the meta device and materialised
directly in float16, so writing it needs about 5 GB of host memory, not the 10 GB of a
float32 initialisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backends.sdxl_weights import MODEL_INDEX, lightning_file

BASE, LIGHTNING, VAE, IP_ADAPTER = (
    "stabilityai/stable-diffusion-xl-base-1.0",
    "ByteDance/SDXL-Lightning",
    "madebyollin/sdxl-vae-fp16-fix",
    "h94/IP-Adapter",
)
IP_ADAPTER_WEIGHT = "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"
IMAGE_ENCODER = "models/image_encoder"

#: SDXL base 1.0 ``unet/config.json`` (the Lightning UNets share it).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
#: madebyollin/sdxl-vae-fp16-fix ``config.json``.
SDXL_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}
#: SDXL base ``scheduler/scheduler_config.json`` (the loader sets trailing timesteps).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
#: SDXL base's two text encoders: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14.
SDXL_TEXT_CONFIGS: tuple[dict[str, Any], dict[str, Any]] = (
    {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
    {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "projection_dim": 1280,
        "hidden_act": "gelu",
    },
)
#: h94/IP-Adapter ``models/image_encoder/config.json`` (OpenCLIP ViT-H/14).
VIT_H_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

#: The same architecture at toy widths (CPU tests).
TINY_UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [2, 4],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": [1, 1],
    "projection_class_embeddings_input_dim": 80,  # 6 time ids x 8 + 32 pooled text
    "cross_attention_dim": 64,
    "norm_num_groups": 1,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [16, 32],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
}
TINY_TEXT_CONFIGS: tuple[dict[str, Any], dict[str, Any]] = (
    {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
     "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "gelu"},
    {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
     "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "gelu"},
)  # fmt: skip
TINY_VIT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "projection_dim": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": 32,
    "patch_size": 8,
}


@dataclass(frozen=True)
class SDXLShapes:
    """Configs of one size of the SDXL stack."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text: tuple[dict[str, Any], dict[str, Any]]
    vit: dict[str, Any]


FULL = SDXLShapes(SDXL_UNET_CONFIG, SDXL_VAE_CONFIG, SDXL_TEXT_CONFIGS, VIT_H_CONFIG)
TINY = SDXLShapes(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIGS, TINY_VIT_CONFIG)


def random_ip_adapter_state_dict(
    unet, image_embed_dim: int, generator: torch.Generator | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """A randomly initialised IP-Adapter (4 image tokens) matching ``unet``'s layout."""
    cross = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / np.sqrt(shape[-1])

    state = {
        "image_proj": {
            "proj.weight": rnd(4 * cross, image_embed_dim),
            "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        },
        "ip_adapter": {},
    }
    key = 1  # the h94 files number the cross-attention layers 1, 3, 5, ...
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = blocks[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        state["ip_adapter"][f"{key}.to_k_ip.weight"] = rnd(hidden, cross)
        state["ip_adapter"][f"{key}.to_v_ip.weight"] = rnd(hidden, cross)
        key += 2
    return state


def random_unet(config: dict[str, Any], dtype: torch.dtype = torch.float16):
    """The UNet with random weights, materialised once in ``dtype`` (no float32 copy)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to(dtype).to_empty(device="cpu")
    with torch.no_grad():
        for module in unet.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return unet


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet (plus end-of-word forms and the two special tokens)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    """A CLIP tokenizer (byte alphabet, no merges) in the Hub's four files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
              "do_lower_case": True, "add_prefix_space": False}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def write_random_sdxl(
    root: str | Path, shapes: SDXLShapes = FULL, *, steps: int = 8, seed: int = 0
) -> dict[str, str]:
    """Write the four repos under ``root/<repo id>``; returns generation.sdxl's sources.

    Returns ``{"base", "lightning", "vae", "ip_adapter"}`` -> local folders, to set in a
    protocol's ``generation.sdxl`` section (with ``diffusion_steps = steps``).
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    root = Path(root)
    torch.manual_seed(seed)
    base = root / BASE
    base.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (base / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    _write_tokenizer(base / "tokenizer", "<|endoftext|>")
    _write_tokenizer(base / "tokenizer_2", "!")
    for name, cls, cfg in (
        ("text_encoder", CLIPTextModel, shapes.text[0]),
        ("text_encoder_2", CLIPTextModelWithProjection, shapes.text[1]),
    ):
        model = cls(CLIPTextConfig(**cfg, vocab_size=49408, max_position_embeddings=77))
        model.half().save_pretrained(base / name)
        del model
    unet = random_unet(shapes.unet)
    unet.save_config(base / "unet")
    ip_state = random_ip_adapter_state_dict(unet, shapes.vit["projection_dim"])
    _save_safetensors(unet.state_dict(), root / LIGHTNING / lightning_file(steps))
    del unet
    vae = AutoencoderKL.from_config(shapes.vae)
    vae.save_pretrained(root / VAE, safe_serialization=True)
    del vae
    ip_flat = {f"{part}.{k}": v.half() for part, d in ip_state.items() for k, v in d.items()}
    _save_safetensors(ip_flat, root / IP_ADAPTER / IP_ADAPTER_WEIGHT)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**shapes.vit))
    encoder.half().save_pretrained(root / IP_ADAPTER / IMAGE_ENCODER)
    del encoder
    return {
        "base": str(base),
        "lightning": str(root / LIGHTNING),
        "vae": str(root / VAE),
        "ip_adapter": str(root / IP_ADAPTER),
    }
