"""Mode ``semantic``: similarity of the epoch's ATM-S embedding to a target EEG embedding.

The cosine, mapped from [-1, 1] to [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.montage import ATM_CHANNELS
from models.rewards.base import EpochData, Reward, RewardError, RewardMode, epoch_window


class SemanticReward(RewardMode):
    """(1 + cos(ATM-S embedding, target)) / 2."""

    mode = "semantic"

    def __init__(self, encoder, target: np.ndarray, channels: Sequence[str] | None = None):
        self.encoder = encoder
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        self.target = t / (np.linalg.norm(t) + 1e-12)
        self.channels = list(channels) if channels else None

    @classmethod
    def from_settings(cls, settings) -> SemanticReward:
        """ATM-S (``settings.encoder``, or a random one) and the target embedding file."""
        from models.decoders.atms import ATMS, load_atms

        encoder = load_atms(settings.encoder) if settings.encoder else ATMS()
        encoder.eval()
        channels = ATM_CHANNELS if encoder.config.n_channels == len(ATM_CHANNELS) else None
        return cls(encoder, load_target_embedding(settings.target_embedding), channels)

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        import torch

        x = epoch_window(epoch, (0.0, 1.0))
        if self.channels is not None:
            index = {ch: i for i, ch in enumerate(epoch.ch_names)}
            missing = [ch for ch in self.channels if ch not in index]
            if missing:
                raise RewardError(f"the encoder needs channels {missing} absent from the epoch")
            x = x[[index[ch] for ch in self.channels]]
        t0 = time.perf_counter()
        with torch.no_grad():
            emb = self.encoder(torch.as_tensor(x[None], dtype=torch.float32))[0].double().numpy()
        encode_ms = (time.perf_counter() - t0) * 1e3
        cos = float(emb @ self.target / (np.linalg.norm(emb) + 1e-12))
        return Reward(
            (1.0 + cos) / 2.0, {"cosine": round(cos, 6), "encode_ms": round(encode_ms, 3)}
        )


def load_target_embedding(path: str | Path) -> np.ndarray:
    """A target EEG embedding from ``.npy`` (no pickles) or ``.safetensors`` (first tensor)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"target embedding {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if not tensors:
            raise RewardError(f"{path} holds no tensor")
        return next(iter(tensors.values())).astype(np.float64).reshape(-1)
    try:
        return np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    except ValueError as err:
        raise RewardError(f"{path}: not a plain .npy array ({err})") from None
