"""The SDXL backend: SDXL-Lightning + IP-Adapter ViT-H, conditioned on image embeddings.

SDXL base supplies the pipeline layout and text encoders, SDXL-Lightning (Lin et al.
2024) the distilled UNet (2-, 4- or 8-step checkpoint, run with a trailing-timestep
Euler scheduler and guidance 0), madebyollin's fp16-fix VAE the decoder (no float32
upcast), and IP-Adapter ViT-H (Ye et al. 2023) the image-prompt cross-attention. The
IP-Adapter's own ViT-H/14 image encoder embeds generated images, so a generated image
and the embedding that made it live in the same 1024-d space.

The text prompt is encoded once at load time and the text encoders are dropped. Every
request passes precomputed image embeddings (``ip_adapter_image_embeds``), one fixed
noise seed per image, and one batched pipeline call for all images.

:meth:`SDXLBackend.assemble` builds the backend from components; the pretrained loader,
the full-size random-weight builder (for timing without downloads) and the tests' tiny
pipeline all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.backends.base import Backend, BackendUnavailableError

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
#: SDXL base ``scheduler/scheduler_config.json`` with Lightning's trailing timesteps.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}
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


def lightning_file(steps: int) -> str:
    """File name of the SDXL-Lightning UNet for ``steps`` inference steps."""
    return f"sdxl_lightning_{steps}step_unet.safetensors"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(device: torch.device, name: str) -> torch.dtype:
    """Half precision on CUDA (float16 or bfloat16), float32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# -- weights ----------------------------------------------------------------------------
def _locate(source: str, filename: str, cache_dir: str | None = None) -> Path | None:
    """A file of a local folder or of a Hub repo in the local cache, or None."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def required_files(cfg) -> list[tuple[str, list[str], str]]:
    """(source, acceptable file names, what it is) for every weight the backend needs."""
    base = cfg.base

    def weights(sub: str, stem: str) -> list[str]:
        return [f"{sub}/{stem}.fp16.safetensors", f"{sub}/{stem}.safetensors"]

    enc = cfg.image_encoder_subfolder
    return [
        (base, ["model_index.json"], "SDXL base layout"),
        (base, ["unet/config.json"], "SDXL UNet config"),
        (base, ["text_encoder/config.json"], "text encoder config"),
        (base, weights("text_encoder", "model"), "text encoder weights"),
        (base, ["text_encoder_2/config.json"], "text encoder 2 config"),
        (base, weights("text_encoder_2", "model"), "text encoder 2 weights"),
        (base, ["tokenizer/vocab.json"], "tokenizer"),
        (base, ["tokenizer_2/vocab.json"], "tokenizer 2"),
        (cfg.lightning, [lightning_file(cfg.diffusion_steps)], "SDXL-Lightning UNet"),
        (cfg.vae, ["config.json"], "fp16-fix VAE config"),
        (cfg.vae, ["diffusion_pytorch_model.safetensors"], "fp16-fix VAE weights"),
        (cfg.ip_adapter, [cfg.ip_adapter_weight], "IP-Adapter ViT-H weights"),
        (cfg.ip_adapter, [f"{enc}/config.json"], "ViT-H image encoder config"),
        (cfg.ip_adapter, [f"{enc}/model.safetensors"], "ViT-H image encoder weights"),
    ]


def check_weights(cfg, cache_dir: str | None = None) -> dict[str, Path]:
    """Find every weight file; raise one error that lists each missing file and its fetch.

    ``cache_dir`` is the Hugging Face hub cache (None: the default, ``HF_HUB_CACHE``).
    """
    found: dict[str, Path] = {}
    missing = []
    for source, names, what in required_files(cfg):
        paths = (_locate(source, n, cache_dir) for n in names)
        path = next((p for p in paths if p is not None), None)
        if path is None:
            name = names[-1]
            missing.append(
                f"  - {what}: {source} :: {name}\n"
                f"      fetch: huggingface-cli download {source} {name}"
                + (f"   (or {names[0]})" if len(names) > 1 else "")
            )
        else:
            found[f"{source}::{names[0]}"] = path
    if missing:
        raise BackendUnavailableError(
            "SDXL backend: missing weight file(s) (looked in local folders and the Hugging "
            "Face cache; set generation.sdxl.* to local paths, or fetch them on a machine "
            "with internet access):\n" + "\n".join(missing)
        )
    return found


def load_ip_adapter_file(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter safetensors file as diffusers' two-part state dict."""
    from safetensors import safe_open

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            part, _, name = key.partition(".")
            if part in state:
                state[part][name] = fh.get_tensor(key)
    return state


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
    key = 1
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


# -- the backend --------------------------------------------------------------------------
class SDXLBackend(Backend):
    """SDXL-Lightning + IP-Adapter; build with :meth:`assemble` or the loaders below."""

    name = "sdxl"

    def __init__(
        self,
        pipe,
        image_encoder,
        image_processor,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        *,
        steps: int,
        width: int,
        height: int,
        model_ids: dict[str, str],
    ) -> None:
        self.pipe = pipe
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.prompt_embeds = prompt_embeds
        self.pooled_prompt_embeds = pooled_prompt_embeds
        self.steps = steps
        self.width, self.height = width, height
        self.model_ids = model_ids
        self.embed_dim = int(image_encoder.config.projection_dim)
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype

    @classmethod
    def assemble(
        cls,
        *,
        unet,
        vae,
        image_encoder,
        image_processor,
        ip_adapter_state_dict: dict[str, dict[str, torch.Tensor]],
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        steps: int,
        width: int,
        height: int,
        ip_adapter_scale: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        scheduler_config: dict[str, Any] | None = None,
        model_ids: dict[str, str] | None = None,
    ) -> SDXLBackend:
        """Wire components into the pipeline that every SDXL run uses."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        config = dict(SDXL_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
        config["timestep_spacing"] = "trailing"
        scheduler = EulerDiscreteScheduler.from_config(config)
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        state = {
            part: {k: v.to(dtype) for k, v in tensors.items()}
            for part, tensors in ip_adapter_state_dict.items()
        }
        pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
        pipe.set_ip_adapter_scale(ip_adapter_scale)
        pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        image_encoder = image_encoder.to(device=device, dtype=dtype).eval()
        if compile:
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs")
        return cls(
            pipe,
            image_encoder,
            image_processor,
            prompt_embeds.to(device=device, dtype=dtype),
            pooled_prompt_embeds.to(device=device, dtype=dtype),
            steps=steps,
            width=width,
            height=height,
            model_ids=model_ids or {},
        )

    @classmethod
    def from_pretrained(
        cls, cfg, device: str = "auto", dtype: str = "float16", compile: bool = False
    ) -> SDXLBackend:
        """Load SDXL base + Lightning + fp16-fix VAE + IP-Adapter from local files only."""
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        files = check_weights(cfg)
        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        local = {"local_files_only": cfg.local_files_only}
        variant = "fp16" if any(".fp16." in str(p) for p in files.values()) else None
        text = StableDiffusionXLPipeline.from_pretrained(
            cfg.base, unet=None, vae=None, torch_dtype=dt, variant=variant, **local
        ).to(dev)
        with torch.no_grad():
            prompt_embeds, _, pooled, _ = text.encode_prompt(
                cfg.prompt, device=dev, do_classifier_free_guidance=False
            )
        scheduler_config = dict(text.scheduler.config)
        del text
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(cfg.base, subfolder="unet", **local)
        )
        lightning = files[f"{cfg.lightning}::{lightning_file(cfg.diffusion_steps)}"]
        unet.load_state_dict(load_file(str(lightning)))
        vae = AutoencoderKL.from_pretrained(cfg.vae, torch_dtype=dt, **local)
        ip_file = files[f"{cfg.ip_adapter}::{cfg.ip_adapter_weight}"]
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            cfg.ip_adapter, subfolder=cfg.image_encoder_subfolder, dtype=dt, **local
        )
        return cls.assemble(
            unet=unet.to(dt),
            vae=vae,
            image_encoder=encoder,
            image_processor=CLIPImageProcessor(),
            ip_adapter_state_dict=load_ip_adapter_file(ip_file),
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            steps=cfg.diffusion_steps,
            width=cfg.width,
            height=cfg.height,
            ip_adapter_scale=cfg.ip_adapter_scale,
            device=dev,
            dtype=dt,
            compile=compile,
            scheduler_config=scheduler_config,
            model_ids={
                "base": cfg.base,
                "unet": f"{cfg.lightning}/{lightning_file(cfg.diffusion_steps)}",
                "vae": cfg.vae,
                "ip_adapter": f"{cfg.ip_adapter}/{cfg.ip_adapter_weight}",
                "image_encoder": f"{cfg.ip_adapter}/{cfg.image_encoder_subfolder}",
            },
        )

    @classmethod
    def random_full_size(
        cls, cfg, device: str = "auto", dtype: str = "float16", compile: bool = False, seed: int = 0
    ) -> SDXLBackend:
        """Full-size SDXL UNet, VAE, ViT-H and IP-Adapter with RANDOM weights.

        For timing on a machine without the weights: same shapes, same code path, same
        FLOPs; the images are noise. Every provenance record says ``random-weights``.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG).to(dt)
        vae = AutoencoderKL.from_config(SDXL_VAE_CONFIG).to(dt)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_CONFIG)).to(dt)
        gen = torch.Generator().manual_seed(seed)
        text_dim = SDXL_UNET_CONFIG["projection_class_embeddings_input_dim"] - 6 * 256
        return cls.assemble(
            unet=unet,
            vae=vae,
            image_encoder=encoder,
            image_processor=CLIPImageProcessor(),
            ip_adapter_state_dict=random_ip_adapter_state_dict(unet, 1024, gen),
            prompt_embeds=torch.randn(1, 77, 2048, generator=gen) * 0.5,
            pooled_prompt_embeds=torch.randn(1, text_dim, generator=gen) * 0.5,
            steps=cfg.diffusion_steps,
            width=cfg.width,
            height=cfg.height,
            ip_adapter_scale=cfg.ip_adapter_scale,
            device=dev,
            dtype=dt,
            compile=compile,
            model_ids={"weights": "random-weights (timing only)", "unet": "sdxl-full-size-config"},
        )

    @classmethod
    def tiny_random(
        cls,
        *,
        channels: tuple[int, int] = (16, 32),
        layers: int = 1,
        embed_dim: int = 32,
        size: int = 32,
        steps: int = 2,
        ip_adapter_scale: float = 0.5,
        ip_adapter_for: Callable[[Any], dict] | None = None,
        seed: int = 0,
    ) -> SDXLBackend:
        """A tiny randomly initialised SDXL pipeline (CPU tests and benchmarks).

        The same SDXL UNet/VAE/ViT classes and the same :meth:`assemble` path as the real
        weights, at toy widths. ``ip_adapter_for(unet)`` gives the IP-Adapter state dict
        (h94 file layout); by default random weights.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=channels,
            layers_per_block=layers,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, layers),
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled text
            cross_attention_dim=64,
            norm_num_groups=1,
        )
        vae = AutoencoderKL(
            block_out_channels=list(channels),
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            norm_num_groups=8,
        )
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                projection_dim=embed_dim,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                image_size=32,
                patch_size=8,
            )
        )
        gen = torch.Generator().manual_seed(seed + 1)
        if ip_adapter_for is None:
            ip_adapter = random_ip_adapter_state_dict(unet, embed_dim, gen)
        else:
            ip_adapter = ip_adapter_for(unet)
        return cls.assemble(
            unet=unet,
            vae=vae,
            image_encoder=encoder,
            image_processor=CLIPImageProcessor(size=32, crop_size=32),
            ip_adapter_state_dict=ip_adapter,
            prompt_embeds=torch.randn(1, 77, 64, generator=gen),
            pooled_prompt_embeds=torch.randn(1, 32, generator=gen),
            steps=steps,
            width=size,
            height=size,
            ip_adapter_scale=ip_adapter_scale,
            model_ids={"weights": "tiny random SDXL (CPU test pipeline)"},
        )

    # -- the interface ---------------------------------------------------------------
    @torch.no_grad()
    def generate(self, embeddings: np.ndarray, seeds: Sequence[int]) -> list[Image.Image]:
        """One batched Lightning call: guidance 0, IP-Adapter embeddings, a seed per image."""
        n = len(seeds)
        if n != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {n} seeds")
        emb = torch.as_tensor(np.asarray(embeddings), dtype=self.dtype, device=self.device)
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        out = self.pipe(
            prompt_embeds=self.prompt_embeds.expand(n, -1, -1),
            pooled_prompt_embeds=self.pooled_prompt_embeds.expand(n, -1),
            ip_adapter_image_embeds=[emb[:, None, :]],  # (B, 1, D): no CFG half
            num_inference_steps=self.steps,
            guidance_scale=0.0,
            generator=generators,
            height=self.height,
            width=self.width,
            output_type="np",
        )
        arr = np.nan_to_num(out.images, nan=0.0)
        return [Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)) for a in arr]

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """ViT-H/14 image embeddings (the IP-Adapter's input space), float32 (n, 1024)."""
        pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        return self.image_encoder(pixel_values=pixels).image_embeds.float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
