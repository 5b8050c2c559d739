"""Plug-in for a learned image-to-EEG model, used instead of the parametric response.

Any :class:`torch.nn.Module` that maps an image batch ``(1, 3, H, W)`` (RGB in [0, 1])
to responses ``(1, n_channels, n_times)`` (or ``(n_channels, n_times)``) in µV can
drive the brain model. Its weights are a safetensors file (never a pickle) whose
metadata describes the output:

``eegs.ch_names``   JSON list of the output channels (10-05 names)
``eegs.sfreq``      output sampling rate (Hz)
``eegs.tmin``       time of the first output sample relative to display onset (s)
``eegs.image_size`` side of the square input image (pixels)
``eegs.class``      ``module:Class`` of the module (optional)
``eegs.kwargs``     JSON object of its constructor arguments (optional)

The class named in the file is only imported when it lives in this project's
``models`` package; any other class must be named by the user (``--learned-class``),
so a downloaded checkpoint cannot make the program import arbitrary code.
:func:`save_learned_model` writes such a file; :class:`ImageToEEG` is a small
reference architecture.
"""

from __future__ import annotations

import importlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.signal import resample_poly
from torch import nn

_TRUSTED_PACKAGE = "models"


class LearnedModelError(ValueError):
    """A learned model that cannot be used; the message names the file and the reason."""


class ImageToEEG(nn.Module):
    """A small convolutional image encoder with a linear read-out to (channels x time).

    Parameters
    ----------
    n_channels, n_times : int
        Shape of the response it predicts.
    hidden : int
        Width of the bottleneck.
    """

    def __init__(self, n_channels: int, n_times: int, hidden: int = 64) -> None:
        super().__init__()
        self.n_channels, self.n_times = n_channels, n_times
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, hidden),
            nn.ReLU(),
        )
        self.readout = nn.Linear(hidden, n_channels * n_times)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] to responses (B, n_channels, n_times)."""
        return self.readout(self.encoder(x)).view(-1, self.n_channels, self.n_times)


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB image as a (1, 3, size, size) float tensor in [0, 1]."""
    img = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def _resolve_class(class_path: str, *, trusted_only: bool, source: Path) -> type[nn.Module]:
    module_name, _, attr = class_path.partition(":")
    if not module_name or not attr:
        raise LearnedModelError(f"{source}: class '{class_path}' must be 'module:Class'")
    if trusted_only and module_name.split(".")[0] != _TRUSTED_PACKAGE:
        raise LearnedModelError(
            f"{source}: the file names class '{class_path}', outside this project's "
            f"'{_TRUSTED_PACKAGE}' package; name it yourself with --learned-class if you "
            "trust it"
        )
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise LearnedModelError(f"{source}: cannot import '{class_path}': {err}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise LearnedModelError(f"{source}: '{class_path}' is not a torch.nn.Module class")
    return obj


class LearnedResponse:
    """A learned image-to-EEG module and the layout of its output.

    Parameters
    ----------
    module : torch.nn.Module
        Maps (1, 3, image_size, image_size) in [0, 1] to (1, n_channels, n_times) µV.
    ch_names : list of str
        Output channels.
    sfreq : float
        Output sampling rate (Hz).
    image_size : int
        Input image side (pixels).
    tmin : float
        Time of the first output sample relative to display onset (s).
    """

    def __init__(
        self,
        module: nn.Module,
        ch_names: list[str],
        sfreq: float,
        image_size: int,
        tmin: float = 0.0,
    ) -> None:
        self.module = module.eval()
        self.ch_names = list(ch_names)
        self.sfreq = float(sfreq)
        self.image_size = int(image_size)
        self.tmin = float(tmin)

    @classmethod
    def load(
        cls,
        path: str | Path,
        class_path: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> LearnedResponse:
        """Build the module and load its safetensors weights and metadata."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise LearnedModelError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise LearnedModelError(f"{path}: not a safetensors file: {err}") from None
        try:
            ch_names = json.loads(meta["eegs.ch_names"])
            sfreq = float(meta["eegs.sfreq"])
            image_size = int(meta["eegs.image_size"])
            tmin = float(meta.get("eegs.tmin", "0"))
            file_kwargs = json.loads(meta.get("eegs.kwargs", "{}"))
        except (KeyError, ValueError, TypeError) as err:
            raise LearnedModelError(
                f"{path}: metadata must hold eegs.ch_names, eegs.sfreq and eegs.image_size "
                f"(see models/brain/learned.py): {err!r}"
            ) from None
        if class_path:
            module_cls = _resolve_class(class_path, trusted_only=False, source=path)
        elif "eegs.class" in meta:
            module_cls = _resolve_class(meta["eegs.class"], trusted_only=True, source=path)
        else:
            raise LearnedModelError(f"{path}: no eegs.class in its metadata; pass the class")
        try:
            module = module_cls(**(file_kwargs if kwargs is None else kwargs))
            module.load_state_dict(state, strict=True)
        except (TypeError, RuntimeError) as err:
            raise LearnedModelError(
                f"{path}: weights do not fit {module_cls.__name__}: {err}"
            ) from None
        return cls(module, ch_names, sfreq, image_size, tmin)

    def check_channels(self, ch_names: list[str]) -> None:
        """Raise if the stream needs channels the model does not predict."""
        missing = [ch for ch in ch_names if ch not in self.ch_names]
        if missing:
            raise LearnedModelError(
                f"the learned model predicts {len(self.ch_names)} channels but not {missing}"
            )

    @torch.no_grad()
    def predict(self, image: Image.Image) -> np.ndarray:
        """The module's output for one image, (n_channels, n_times) µV at its own rate."""
        out = self.module(image_tensor(image, self.image_size))
        out = out.reshape(len(self.ch_names), -1)
        return out.detach().cpu().numpy().astype(np.float64)

    def response(self, image: Image.Image, ch_names: list[str], sfreq: float) -> np.ndarray:
        """The response on ``ch_names`` at ``sfreq``, sample 0 at display onset."""
        self.check_channels(ch_names)
        y = self.predict(image)[[self.ch_names.index(ch) for ch in ch_names]]
        if abs(sfreq - self.sfreq) > 1e-9:
            ratio = Fraction(sfreq / self.sfreq).limit_denominator(1000)
            y = resample_poly(y, ratio.numerator, ratio.denominator, axis=1)
        shift = int(round(self.tmin * sfreq))
        if shift < 0:
            y = y[:, -shift:]
        elif shift > 0:
            y = np.concatenate([np.zeros((y.shape[0], shift)), y], axis=1)
        return y


def save_learned_model(
    module: nn.Module,
    path: str | Path,
    *,
    ch_names: list[str],
    sfreq: float,
    image_size: int,
    tmin: float = 0.0,
    class_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights and output layout as a safetensors file."""
    from safetensors.torch import save_file

    cls = type(module)
    meta = {
        "eegs.ch_names": json.dumps(list(ch_names)),
        "eegs.sfreq": repr(float(sfreq)),
        "eegs.image_size": str(int(image_size)),
        "eegs.tmin": repr(float(tmin)),
        "eegs.class": class_path or f"{cls.__module__}:{cls.__qualname__}",
        "eegs.kwargs": json.dumps(kwargs or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    save_file(state, str(path), metadata=meta)
    return path
