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

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from models.backends.base import Backend, BackendUnavailableError
from models.backends.sdxl_weights import check_weights, fp16_variant, lightning_file

if TYPE_CHECKING:  # torch is imported where it runs: registering the backend loads nothing
    import torch

logger = logging.getLogger("eegs.sdxl")
#: Offset of the retry seed when an image comes out NaN or black.
RETRY_SEED_OFFSET = 1_000_003


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(device: torch.device, name: str) -> torch.dtype:
    """Half precision on CUDA (float16 or bfloat16), float32 on CPU."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# -- weights ----------------------------------------------------------------------------
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


def load_unet(config_dir: Path, weights: Path, dtype: torch.dtype):
    """The SDXL UNet from its config, holding the tensors of ``weights`` (Lightning).

    Built on the meta device, then each tensor is read, cast and assigned in turn: the
    host holds one copy of the weights, never a random initialisation.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir))
    with safe_open(str(weights), framework="pt", device="cpu") as fh:
        state = {k: fh.get_tensor(k).to(dtype) for k in fh.keys()}  # noqa: SIM118
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise BackendUnavailableError(
            f"{weights}: does not fit the SDXL UNet of {config_dir}: {err}"
        ) from None
    left = [n for n, t in (*unet.named_parameters(), *unet.named_buffers()) if t.is_meta]
    if left:
        raise BackendUnavailableError(f"{weights}: no tensors for {left[:5]} of the UNet")
    return unet


def is_valid_render(image: np.ndarray) -> bool:
    """False for a non-finite or black render (the fp16 overflow failures)."""
    return bool(np.isfinite(image).all() and float(image.max()) > 1.0 / 255)


def _to_image(array: np.ndarray, seed: int) -> Image.Image:
    image = Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))
    image.info["eegs_seed"] = seed
    return image


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
        self.failed_images = 0  # renders dropped after a failed retry

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
        dtype: torch.dtype | None = None,
        compile: bool = False,
        scheduler_config: dict[str, Any] | None = None,
        model_ids: dict[str, str] | None = None,
    ) -> SDXLBackend:
        """Wire components into the pipeline that every SDXL run uses (float32 by default)."""
        import torch
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        from models.backends.sdxl_random import SDXL_SCHEDULER_CONFIG

        dtype = torch.float32 if dtype is None else dtype

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
    def from_settings(cls, settings, *, random_weights: bool = False) -> SDXLBackend:
        """``generation.sdxl`` on ``generation.device``; the weight files checked first.

        The check (:func:`models.backends.sdxl_weights.check_weights`) runs before torch
        or diffusers is imported, so a missing file is one clear error.
        """
        g = settings
        if random_weights:
            return cls.random_full_size(g.sdxl, g.device, g.dtype, g.compile, seed=g.seed)
        check_weights(g.sdxl)
        return cls.from_pretrained(g.sdxl, g.device, g.dtype, g.compile)

    @classmethod
    def from_pretrained(
        cls,
        cfg,
        device: str = "auto",
        dtype: str = "float16",
        compile: bool = False,
        steps: int | None = None,
    ) -> SDXLBackend:
        """Load SDXL base + Lightning + fp16-fix VAE + IP-Adapter from local files only.

        Every file is checked before diffusers or transformers is imported
        (:func:`models.backends.sdxl_weights.check_weights`), so a missing file is one
        clear error, not a traceback. The UNet is built on the meta device and takes the
        Lightning file's tensors as they are read: no random full-size initialisation.
        ``steps`` overrides the inference steps (default: the checkpoint's).
        """
        files = check_weights(cfg)
        import torch
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        local = {"local_files_only": cfg.local_files_only}
        text = StableDiffusionXLPipeline.from_pretrained(
            cfg.base,
            unet=None,
            vae=None,
            torch_dtype=dt,
            variant=fp16_variant(cfg, files),
            **local,
        ).to(dev)
        with torch.no_grad():
            prompt_embeds, _, pooled, _ = text.encode_prompt(
                cfg.prompt, device=dev, do_classifier_free_guidance=False
            )
        scheduler_config = dict(text.scheduler.config)
        del text
        lightning = files[f"{cfg.lightning}::{lightning_file(cfg.diffusion_steps)}"]
        unet = load_unet(files[f"{cfg.base}::unet/config.json"].parent, lightning, dt)
        vae = AutoencoderKL.from_pretrained(cfg.vae, torch_dtype=dt, **local)
        ip_file = files[f"{cfg.ip_adapter}::{cfg.ip_adapter_weight}"]
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            cfg.ip_adapter, subfolder=cfg.image_encoder_subfolder, dtype=dt, **local
        )
        side = int(encoder.config.image_size)
        return cls.assemble(
            unet=unet,
            vae=vae,
            image_encoder=encoder,
            image_processor=CLIPImageProcessor(size=side, crop_size=side),
            ip_adapter_state_dict=load_ip_adapter_file(ip_file),
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            steps=cfg.diffusion_steps if steps is None else steps,
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
        """Full-size SDXL UNet, VAE, ViT-H and IP-Adapter with RANDOM weights, in memory.

        For timing on a GPU without the weights: same shapes, same code path from
        :meth:`assemble` on, same FLOPs; the images are noise. Every provenance record
        says ``random-weights``. (``eegs bench generation --full-size`` also goes through
        the files and :meth:`from_pretrained`.)
        """
        import torch
        from diffusers import AutoencoderKL
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        from models.backends.sdxl_random import (
            SDXL_TEXT_CONFIGS,
            SDXL_UNET_CONFIG,
            SDXL_VAE_CONFIG,
            VIT_H_CONFIG,
            random_ip_adapter_state_dict,
            random_unet,
        )

        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        torch.manual_seed(seed)
        unet = random_unet(SDXL_UNET_CONFIG, dt)
        vae = AutoencoderKL.from_config(SDXL_VAE_CONFIG).to(dt)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_CONFIG)).to(dt)
        gen = torch.Generator().manual_seed(seed)
        cross = sum(c["hidden_size"] for c in SDXL_TEXT_CONFIGS)
        pooled = SDXL_TEXT_CONFIGS[1]["projection_dim"]
        return cls.assemble(
            unet=unet,
            vae=vae,
            image_encoder=encoder,
            image_processor=CLIPImageProcessor(),
            ip_adapter_state_dict=random_ip_adapter_state_dict(unet, 1024, gen),
            prompt_embeds=torch.randn(1, 77, cross, generator=gen) * 0.5,
            pooled_prompt_embeds=torch.randn(1, pooled, generator=gen) * 0.5,
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
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        from models.backends.sdxl_random import (
            TINY_UNET_CONFIG,
            TINY_VAE_CONFIG,
            TINY_VIT_CONFIG,
            random_ip_adapter_state_dict,
        )

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **{
                **TINY_UNET_CONFIG,
                "block_out_channels": list(channels),
                "layers_per_block": layers,
                "transformer_layers_per_block": [1, layers],
            }
        )
        vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "block_out_channels": list(channels)})
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**{**TINY_VIT_CONFIG, "projection_dim": embed_dim})
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
    def generate(self, embeddings: np.ndarray, seeds: Sequence[int]) -> list[Image.Image | None]:
        """One batched Lightning call: guidance 0, IP-Adapter embeddings, a seed per image.

        An image that comes out non-finite or black (fp16 overflow) is logged and made
        again once, with another seed and the VAE in float32; if that fails too, its
        entry is None and it is never embedded or shown.
        """
        n = len(seeds)
        if n != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {n} seeds")
        emb = np.asarray(embeddings)
        arr = self._render(emb, seeds)
        images: list[Image.Image | None] = [None] * n
        bad = []
        for i, a in enumerate(arr):
            if is_valid_render(a):
                images[i] = _to_image(a, int(seeds[i]))
            else:
                bad.append(i)
        if bad:
            retry = [int(seeds[i]) + RETRY_SEED_OFFSET for i in bad]
            logger.warning(
                "SDXL made %d invalid image(s) (NaN or black) for seed(s) %s; "
                "retrying once with seed(s) %s and the VAE in float32",
                len(bad), [int(seeds[i]) for i in bad], retry,
            )  # fmt: skip
            again = self._render(emb[bad], retry, vae_float32=True)
            for i, seed, a in zip(bad, retry, again, strict=True):
                if is_valid_render(a):
                    images[i] = _to_image(a, seed)
                else:
                    self.failed_images += 1
                    logger.error("SDXL image for seed %d is invalid again: dropped", seeds[i])
        return images

    def _render(self, emb: np.ndarray, seeds: Sequence[int], vae_float32: bool = False):
        """The pipeline's float images (n, H, W, 3), NaN kept as NaN."""
        import torch

        n = len(seeds)
        emb_t = torch.as_tensor(emb, dtype=self.dtype, device=self.device)
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        vae = self.pipe.vae
        upcast = vae_float32 and vae.dtype == torch.float16
        force = vae.config.force_upcast
        if upcast:  # the pipeline upcasts the VAE for decoding and casts it back after
            vae.register_to_config(force_upcast=True)
        try:
            with torch.no_grad():
                out = self.pipe(
                    prompt_embeds=self.prompt_embeds.expand(n, -1, -1),
                    pooled_prompt_embeds=self.pooled_prompt_embeds.expand(n, -1),
                    ip_adapter_image_embeds=[emb_t[:, None, :]],  # (B, 1, D): no CFG half
                    num_inference_steps=self.steps,
                    guidance_scale=0.0,
                    generator=generators,
                    height=self.height,
                    width=self.width,
                    output_type="np",
                )
        finally:
            if upcast:
                vae.register_to_config(force_upcast=force)
        return np.asarray(out.images)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """ViT-H/14 image embeddings (the IP-Adapter's input space), float32 (n, 1024)."""
        import torch

        pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            out = self.image_encoder(pixel_values=pixels).image_embeds
        return out.float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
