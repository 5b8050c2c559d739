"""CLIP training of ATM-S on (EEG epoch, image embedding) pairs, and k-way retrieval.

The encoder learns to put an epoch's embedding next to the embedding of the image that
evoked it and away from the other images of the batch (symmetric InfoNCE, Radford et
al. 2021, as ATM-S was trained). Image embeddings are fixed. Success is measured as in
Li et al. (2024): for each held-out image, the EEG embedding (repetitions averaged)
is compared with the true image and k - 1 other held-out images; top-1 / top-5 is how
often the true image ranks first / in the first five.

:class:`ClipTrainer` holds everything a resumed run needs (weights, optimiser, epoch,
input statistics, history) in a state dict of tensors and plain values, saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.decoders.atms import ATMS

MAX_LOGIT_SCALE = 100.0
"""Upper bound of exp(logit_scale), as in CLIP, so the temperature cannot collapse."""


def clip_loss(eeg: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over cosine similarities of matched pairs (row i <-> i)."""
    eeg = F.normalize(eeg, dim=-1)
    image = F.normalize(image, dim=-1)
    logits = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * eeg @ image.T
    target = torch.arange(len(eeg), device=eeg.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval_accuracy(
    eeg_emb: np.ndarray | torch.Tensor,
    image_emb: np.ndarray | torch.Tensor,
    k: int,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Score k-way retrieval: row i of ``image_emb`` should best match row i of ``eeg_emb``.

    Returns top-1 (and top-5 when k > 5) accuracy and the chance level.

    Parameters
    ----------
    eeg_emb, image_emb : (n, d)
        Matched EEG and image embeddings of ``n`` distinct images.
    k : int
        Candidates per query: the true image and ``k - 1`` others drawn at random
        (all ``n`` when ``k >= n``).
    seed : int
        Seed of the distractor draw, so that epochs are compared on the same task.
    """
    e = F.normalize(torch.as_tensor(np.asarray(eeg_emb), dtype=torch.float32), dim=-1)
    m = F.normalize(torch.as_tensor(np.asarray(image_emb), dtype=torch.float32), dim=-1)
    n = len(e)
    if n < 2:
        raise ValueError("retrieval needs at least 2 images")
    k = min(k, n)
    sim = e @ m.T  # (n, n)
    rng = np.random.default_rng(seed)
    hit1 = hit5 = 0
    for i in range(n):
        others = np.delete(np.arange(n), i)
        cand = others if k == n else rng.choice(others, size=k - 1, replace=False)
        rank = int((sim[i, torch.as_tensor(cand)] > sim[i, i]).sum())
        hit1 += rank == 0
        hit5 += rank < 5
    out = {"k": k, "top1": hit1 / n, "chance_top1": 1 / k}
    if k > 5:
        out["top5"] = hit5 / n
    return out


@dataclass
class PairedEEG:
    """EEG trials and the image embedding of each trial.

    ``eeg`` (n_trials, channels, times); ``image_index`` (n_trials,) indexes rows of
    ``embeddings`` (n_images, d).
    """

    eeg: np.ndarray
    image_index: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if self.eeg.ndim != 3:
            raise ValueError(f"EEG must be (trials, channels, times); got {self.eeg.shape}")
        if self.image_index.shape != (len(self.eeg),):
            raise ValueError(f"{len(self.eeg)} trials but {self.image_index.shape} image indices")
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (images, dim); got {self.embeddings.shape}")
        if len(self.image_index) and (
            self.image_index.min() < 0 or self.image_index.max() >= len(self.embeddings)
        ):
            raise ValueError("an image index points outside the embeddings")

    def averaged(self) -> tuple[np.ndarray, np.ndarray]:
        """Repetitions averaged per image: (images shown, ch, t) and their embeddings."""
        images = np.unique(self.image_index)
        eeg = np.stack([self.eeg[self.image_index == i].mean(0) for i in images])
        return eeg.astype(np.float32), self.embeddings[images]


def synthetic_pairs(
    n_images: int,
    n_repetitions: int,
    *,
    n_channels: int = 17,
    n_times: int = 250,
    embed_dim: int = 1024,
    latent_dim: int = 32,
    snr: float = 0.5,
    sfreq: float = 250.0,
    seed: int = 0,
    mixing_seed: int = 1234,
) -> PairedEEG:
    """Pairs where each EEG trial is a noisy linear function of its image embedding.

    Image embeddings lie in a ``latent_dim``-dimensional subspace of the
    ``embed_dim`` space (as CLIP embeddings concentrate in few directions). The EEG is
    ``A @ embedding`` (A: fixed random spatial x temporal patterns, smooth in time)
    plus white noise whose variance is the signal's variance divided by ``snr``.
    ``mixing_seed`` fixes A and the embedding subspace, so a training set and a test
    set drawn with different ``seed`` share the same "brain".
    """
    mix = np.random.default_rng(mixing_seed)
    basis = mix.standard_normal((latent_dim, embed_dim)) / np.sqrt(latent_dim)
    t = np.arange(n_times) / sfreq
    # each embedding direction drives a spatial pattern with a damped oscillation in time
    freq = mix.uniform(2.0, 12.0, embed_dim)
    lat = mix.uniform(0.05, 0.5, embed_dim)
    phase = mix.uniform(0, 2 * np.pi, embed_dim)
    envelope = np.exp(-(((t[None] - lat[:, None]) / 0.15) ** 2))
    temporal = envelope * np.cos(2 * np.pi * freq[:, None] * t[None] + phase[:, None])
    spatial = mix.standard_normal((embed_dim, n_channels))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_images, latent_dim))
    emb = z @ basis
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    signal = np.einsum("nd,dc,dt->nct", emb, spatial, temporal)
    noise_sd = np.sqrt(signal.var() / snr)
    eeg = signal[:, None] + noise_sd * rng.standard_normal(
        (n_images, n_repetitions, n_channels, n_times)
    )
    return PairedEEG(
        eeg=eeg.reshape(-1, n_channels, n_times).astype(np.float32),
        image_index=np.repeat(np.arange(n_images), n_repetitions),
        embeddings=emb.astype(np.float32),
    )


class ClipTrainer:
    """Train an ATM-S encoder with the CLIP loss, one epoch at a time.

    Parameters
    ----------
    model : ATMS
        The encoder (its ``logit_scale`` is the learned temperature).
    lr, weight_decay, batch_size
        AdamW and mini-batch settings.
    seed : int
        Each epoch reseeds the torch RNG with ``(seed, epoch)``, so a resumed run
        repeats exactly what an uninterrupted one would have done.
    device : str
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        model: ATMS,
        *,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.epoch = 0  # epochs completed
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []

    def set_input_statistics(self, eeg: np.ndarray) -> None:
        """Per-channel mean and SD of the training EEG, used to scale every input."""
        x = torch.as_tensor(eeg, dtype=torch.float32)
        self.mean = x.mean(dim=(0, 2)).unsqueeze(1)
        self.std = x.std(dim=(0, 2)).unsqueeze(1).clamp_min(1e-6)

    def _scale(self, eeg: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(eeg, dtype=torch.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def train_epoch(
        self, data: PairedEEG, progress: Callable[[int, float], None] | None = None
    ) -> float:
        """One pass over the trials in random order; returns the mean batch loss.

        ``progress(n_trials_done, loss)`` is called after every batch.
        """
        if self.mean is None:
            self.set_input_statistics(data.eeg)
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(data.eeg))
        emb = torch.as_tensor(data.embeddings, dtype=torch.float32)
        idx_all = torch.as_tensor(data.image_index)
        self.model.train()
        losses = []
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            if len(idx) < 2:
                continue
            x = self._scale(data.eeg[idx.numpy()]).to(self.device)
            target = emb[idx_all[idx]].to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = clip_loss(self.model(x), target, self.model.logit_scale)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(len(idx), losses[-1])
        self.epoch += 1
        self.model.eval()
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def embed(self, eeg: np.ndarray) -> np.ndarray:
        """EEG embeddings (eval mode) of (n, channels, times) epochs."""
        self.model.eval()
        x = self._scale(eeg)
        out = [self.model(c.to(self.device)).cpu() for c in torch.split(x, 256)]
        return torch.cat(out).numpy()

    def evaluate(self, data: PairedEEG, ks: Sequence[int], *, seed: int = 0) -> dict[str, Any]:
        """k-way retrieval on held-out images, repetitions averaged per image."""
        eeg, emb = data.averaged()
        pred = self.embed(eeg)
        out: dict[str, Any] = {"n_images": len(eeg)}
        for k in ks:
            if k <= len(eeg):
                out[f"{k}way"] = retrieval_accuracy(pred, emb, k, seed=seed)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values only)."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "seed": self.seed,
            "mean": self.mean,
            "std": self.std,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same architecture and settings)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        self.mean, self.std = state["mean"], state["std"]
        self.history = list(state["history"])
