"""Which files the SDXL backend reads, where they are, and how to fetch them.

Kept free of torch, diffusers and transformers, so that a lab with a missing file (or a
broken install) gets the list of what is missing before anything heavy is imported.

The list is derived, not written by hand: SDXL base's ``model_index.json`` names the
pipeline's components and the library class of each; the loader
(:meth:`models.backends.sdxl.SDXLBackend.from_pretrained`) takes every component of it
except the UNet's weights (SDXL-Lightning's file replaces them) and the VAE (the
fp16-fix VAE replaces it), and each component kind reads the files its library's
``from_pretrained`` reads:

- a ``diffusers`` or ``transformers`` model: ``config.json`` and its safetensors
  weights (the ``fp16`` variant when present);
- a scheduler: ``scheduler_config.json``;
- a tokenizer (CLIP's byte-level BPE): ``tokenizer_config.json``, ``vocab.json``,
  ``merges.txt``, ``special_tokens_map.json``.

When ``model_index.json`` itself is missing, the rest of SDXL base cannot be derived;
``eegs fetch-weights`` fetches it first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.backends.base import BackendUnavailableError

MODEL_INDEX = "model_index.json"
#: Weight file names of the two model libraries (their ``SAFE_WEIGHTS_NAME`` constants).
WEIGHTS_NAME = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
SCHEDULER_CONFIG = "scheduler_config.json"
#: Components of SDXL base the loader does not read from base (replaced, or config only).
REPLACED = {"vae"}
CONFIG_ONLY = {"unet"}


class MissingWeightsError(BackendUnavailableError):
    """Weight files the SDXL backend needs are not on this machine."""

    def __init__(self, message: str, missing: list[WeightFile]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class WeightFile:
    """One file the loader reads: its source (Hub id or folder), names it may have."""

    source: str
    names: tuple[str, ...]  # acceptable names, preferred first (fp16 variant, then full)
    what: str

    @property
    def key(self) -> str:
        """``SOURCE::NAME`` with the preferred name, how callers look a file up."""
        return f"{self.source}::{self.names[0]}"


def lightning_file(steps: int) -> str:
    """File name of the SDXL-Lightning UNet for ``steps`` inference steps."""
    return f"sdxl_lightning_{steps}step_unet.safetensors"


def locate(source: str, filename: str, cache_dir: str | None = None) -> Path | None:
    """A file of a local folder, or of a Hub repo in the local cache; None when absent."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    if local.is_absolute() or source.startswith("."):
        return None  # a folder that does not exist is not a Hub id
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def component_files(name: str, library: str, cls: str) -> list[tuple[tuple[str, ...], str]]:
    """The files one pipeline component reads: [(acceptable names, what)]."""
    if cls.endswith(("Tokenizer", "TokenizerFast")):
        return [((f"{name}/{f}",), f"{name} ({cls})") for f in TOKENIZER_FILES]
    if cls.endswith("Scheduler"):
        return [((f"{name}/{SCHEDULER_CONFIG}",), f"{name} ({cls})")]
    if library not in WEIGHTS_NAME:
        raise BackendUnavailableError(
            f"{MODEL_INDEX}: component {name!r} is a {library}.{cls}; the SDXL loader "
            f"knows diffusers and transformers components only"
        )
    stem = f"{name}/{WEIGHTS_NAME[library]}"
    files = [((f"{name}/config.json",), f"{name} config ({cls})")]
    if name not in CONFIG_ONLY:
        files.append(
            ((f"{stem}.fp16.safetensors", f"{stem}.safetensors"), f"{name} weights ({cls})")
        )
    return files


def base_components(model_index: dict) -> list[tuple[str, str, str]]:
    """(component, library, class) of SDXL base that the loader reads."""
    out = []
    for name, spec in model_index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, cls = spec
        if library is None or cls is None or name in REPLACED:
            continue
        out.append((name, str(library), str(cls)))
    return out


def required_files(cfg, cache_dir: str | None = None) -> list[WeightFile]:
    """Every file the loader reads for the protocol's ``generation.sdxl`` section.

    SDXL base's part is derived from its ``model_index.json`` when that is here; when it
    is not, the list holds ``model_index.json`` alone for SDXL base.
    """
    files = [WeightFile(cfg.base, (MODEL_INDEX,), "SDXL base pipeline layout")]
    index_path = locate(cfg.base, MODEL_INDEX, cache_dir)
    if index_path is not None:
        try:
            model_index = json.loads(index_path.read_text())
        except (OSError, ValueError) as err:
            raise BackendUnavailableError(f"{index_path}: not readable JSON: {err}") from None
        for name, library, cls in base_components(model_index):
            for names, what in component_files(name, library, cls):
                files.append(WeightFile(cfg.base, names, what))
    enc = cfg.image_encoder_subfolder
    files += [
        WeightFile(cfg.lightning, (lightning_file(cfg.diffusion_steps),), "SDXL-Lightning UNet"),
        WeightFile(cfg.vae, ("config.json",), "fp16-fix VAE config"),
        WeightFile(cfg.vae, ("diffusion_pytorch_model.safetensors",), "fp16-fix VAE weights"),
        WeightFile(cfg.ip_adapter, (cfg.ip_adapter_weight,), "IP-Adapter ViT-H weights"),
        WeightFile(cfg.ip_adapter, (f"{enc}/config.json",), "ViT-H image encoder config"),
        WeightFile(cfg.ip_adapter, (f"{enc}/model.safetensors",), "ViT-H image encoder weights"),
    ]
    return files


def check_weights(cfg, cache_dir: str | None = None) -> dict[str, Path]:
    """Find every file; raise one error that names each missing file and how to fetch it.

    Returns ``{WeightFile.key: path}``. ``cache_dir`` is the Hugging Face hub cache
    (None: the default, ``HF_HUB_CACHE``).
    """
    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    for wf in required_files(cfg, cache_dir):
        path = next((p for n in wf.names if (p := locate(wf.source, n, cache_dir))), None)
        if path is None:
            missing.append(wf)
        else:
            found[wf.key] = path
    if missing:
        lines = []
        for wf in missing:
            alt = f" (or {wf.names[-1]})" if len(wf.names) > 1 else ""
            lines.append(f"  - {wf.what}: {wf.source} :: {wf.names[0]}{alt}")
        if any(wf.names == (MODEL_INDEX,) for wf in missing):
            lines.append(
                f"  - and the files SDXL base's {MODEL_INDEX} names (known once it is here)"
            )
        raise MissingWeightsError(
            f"SDXL backend: {len(missing)} missing weight file(s); looked in local folders "
            "and the Hugging Face cache:\n" + "\n".join(lines) + "\n"
            "Fetch them on a machine with internet access with `eegs fetch-weights` (into "
            "the Hugging Face cache, or --dir DIR and point generation.sdxl.* at DIR), or "
            "one by one with `hf download REPO FILE`.",
            missing,
        )
    return found


def fp16_variant(cfg, found: dict[str, Path]) -> str | None:
    """``"fp16"`` when every SDXL base weight found is the fp16 variant, else None."""
    base_weights = [p for k, p in found.items() if k.startswith(f"{cfg.base}::")]
    base_weights = [p for p in base_weights if p.name.endswith(".safetensors")]
    if base_weights and all(".fp16." in p.name for p in base_weights):
        return "fp16"
    return None
