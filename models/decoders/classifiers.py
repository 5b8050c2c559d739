"""Binary EEG emotion classifiers behind one interface: ATM-S-FC and EEGNet.

Both take epochs as ``(n_epochs, n_channels, n_times)`` float arrays in µV, already
cropped to the decoding window (:func:`crop_window`), and labels 0 = sadness,
1 = amusement (:data:`CLASS_NAMES` gives the column order of ``predict_proba``).
Both offer ``fit``, ``predict_proba``, ``predict``, ``save`` and ``load``; files are
safetensors with the settings in their metadata, so a saved decoder is reloaded
without unpickling anything.

- :class:`AtmsFcClassifier` (the poster's ATM-S-FC): a frozen ATM-S encoder turns each
  epoch into a 1024-d feature vector, and an MLP 1024 -> 512 -> 256 -> 2 (ReLU,
  Dropout) is trained on those features. Unless an encoder checkpoint is given the
  encoder is randomly initialised, which makes ATM-S-FC a random-feature model; no
  pretrained ATM-S weights ship with EEGS (``eegs train-encoder`` makes some).
- :class:`EegNetClassifier`: braindecode's ``EEGNet``, trained end to end, with its
  temporal kernel scaled from 64 samples at 128 Hz to the data's rate.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from models.decoders.atms import ATMS, ATMSConfig, CheckpointError, load_atms, read_safetensors

CLASS_NAMES: tuple[str, str] = ("sadness", "amusement")
"""Class order of every classifier: column 0 = sadness (label 0), 1 = amusement (1)."""

FORMAT = "eegs-classifier"


class ClassifierError(ValueError):
    """Data a classifier cannot use (wrong shape, labels, or too few epochs)."""


@dataclass(frozen=True)
class AtmsFcSettings:
    """Training of the ATM-S-FC head (see the protocol's ``[decoder.atms_fc]``)."""

    hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.5
    epochs: int = 150
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-3
    val_fraction: float = 0.0
    patience: int = 0


@dataclass(frozen=True)
class EegNetSettings:
    """Training of EEGNet (see the protocol's ``[decoder.eegnet]``)."""

    epochs: int = 150
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 1e-3
    dropout: float = 0.25
    f1: int = 8
    depth: int = 2
    kernel_length_128hz: int = 64
    val_fraction: float = 0.0
    patience: int = 0


def crop_window(
    data: np.ndarray, sfreq: float, tmin: float, window_s: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Cut the decoding window out of epochs that start at ``tmin`` seconds.

    ``round((end - start) * sfreq)`` samples are kept from the sample at ``start``
    (250 samples for 0-1 s at 250 Hz), so the window never depends on whether the
    epoch's last sample is included.
    """
    data = np.asarray(data)
    start = int(round((window_s[0] - tmin) * sfreq))
    n = int(round((window_s[1] - window_s[0]) * sfreq))
    if start < 0 or start + n > data.shape[-1]:
        have = (tmin, tmin + (data.shape[-1] - 1) / sfreq)
        raise ClassifierError(
            f"decoding window {list(window_s)} s is not inside the epochs "
            f"({have[0]:.3f}..{have[1]:.3f} s at {sfreq:g} Hz)"
        )
    return data[..., start : start + n]


def channel_picks(ch_names: list[str] | None, wanted: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of the channels the decoders read (``decoder.channels``), in that order.

    ``wanted`` empty keeps every channel. Otherwise each name must be in ``ch_names``
    (matched without regard to case), so a recording that lacks one fails here, naming
    what is missing, instead of training on the wrong sensors.
    """
    if not wanted:
        return list(range(len(ch_names or [])))
    if not ch_names:
        raise ClassifierError(
            f"decoder.channels names {len(wanted)} channels but the epochs carry no "
            "channel names to pick them from"
        )
    index = {name.lower(): i for i, name in enumerate(ch_names)}
    missing = [ch for ch in wanted if ch.lower() not in index]
    if missing:
        raise ClassifierError(
            f"decoder.channels {missing} not in the recording's channels {list(ch_names)}"
        )
    return [index[ch.lower()] for ch in wanted]


def pick_channels(
    data: np.ndarray, ch_names: list[str] | None, wanted: list[str] | tuple[str, ...]
) -> tuple[np.ndarray, list[str] | None]:
    """``data`` (..., channels, times) and names reduced to :func:`channel_picks`."""
    if not wanted:
        return data, ch_names
    picks = channel_picks(ch_names, wanted)
    return np.asarray(data)[..., picks, :], [ch_names[i] for i in picks]


def scaled_kernel_length(kernel_length_128hz: int, sfreq: float) -> int:
    """EEGNet's temporal kernel (64 samples = 0.5 s at 128 Hz) at another rate."""
    return max(2, int(round(kernel_length_128hz * sfreq / 128.0)))


class EmotionClassifier(ABC):
    """Common interface of the binary emotion decoders.

    Subclasses build their network in ``__init__`` (seeded) and implement
    :meth:`_fit` and :meth:`_logits` on standardised tensors.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        sfreq: float,
        *,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        self.n_channels = int(n_channels)
        self.n_times = int(n_times)
        self.sfreq = float(sfreq)
        self.standardize = bool(standardize)
        self.seed = int(seed)
        self.mean = torch.zeros(self.n_channels, 1)
        self.std = torch.ones(self.n_channels, 1)
        self.fitted = False
        self.train_info: dict[str, Any] = {}

    # -- public interface ----------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> EmotionClassifier:
        """Train on epochs ``X`` (n, channels, times) with labels ``y`` in {0, 1}."""
        x = self._check_x(X)
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ClassifierError(f"{x.shape[0]} epochs but labels of shape {y.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ClassifierError(f"labels must be 0 (sadness) or 1 (amusement); got {set(y)}")
        if np.bincount(y.astype(int), minlength=2).min() < 1:
            raise ClassifierError("training data must hold both classes")
        if self.standardize:
            self.mean = x.mean(dim=(0, 2)).unsqueeze(1)
            self.std = x.std(dim=(0, 2)).unsqueeze(1).clamp_min(1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._fit(self._scale(x), torch.as_tensor(y, dtype=torch.long))
        self.fitted = True
        return self

    @torch.no_grad()
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in :data:`CLASS_NAMES` order."""
        if not self.fitted:
            raise ClassifierError(f"{self.kind} classifier is not fitted")
        x = self._scale(self._check_x(X))
        return torch.softmax(self._logits(x), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels (0 = sadness, 1 = amusement)."""
        return self.predict_proba(X).argmax(axis=1)

    def save(self, path: str | Path) -> Path:
        """Write weights and settings to one safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self._state().items()}
        tensors["input.mean"] = self.mean.contiguous()
        tensors["input.std"] = self.std.contiguous()
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "classes": json.dumps(CLASS_NAMES),
            "shape": json.dumps(
                {"n_channels": self.n_channels, "n_times": self.n_times, "sfreq": self.sfreq}
            ),
            "standardize": json.dumps(self.standardize),
            "seed": str(self.seed),
            **{k: json.dumps(v) for k, v in self._metadata().items()},
        }
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionClassifier:
        """Read a classifier written by :meth:`save` (any kind)."""
        return load_classifier(path)

    # -- for subclasses ------------------------------------------------------------------
    @abstractmethod
    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None: ...

    @abstractmethod
    def _logits(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def _metadata(self) -> dict[str, Any]:
        return {}

    def _check_x(self, X: np.ndarray) -> torch.Tensor:
        x = np.asarray(X, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.n_channels, self.n_times):
            raise ClassifierError(
                f"{self.kind} expects epochs of shape (n, {self.n_channels}, {self.n_times}); "
                f"got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ClassifierError("epochs contain NaN or infinite values")
        return torch.from_numpy(x)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _split_validation(y: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, validation) indices; the validation part holds ``fraction``."""
    train, val = [], []
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx))]
        k = int(round(fraction * len(idx))) if len(idx) >= 4 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(val)


def _train(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AtmsFcSettings | EegNetSettings
) -> dict[str, Any]:
    """Mini-batch AdamW on class-balanced cross-entropy (the torch RNG is seeded).

    ``s`` gives the passes, learning rate, batch size, weight decay and early stopping.
    With ``val_fraction > 0`` a stratified part of the training data is held out
    (inner validation split of the training fold, never its test data) and the weights
    of the pass with the lowest validation loss are kept, since a network memorises
    ~100 training epochs long before its last pass. It is off by default: on 100
    brain-model epochs 20 validation epochs chose passes badly and ATM-S-FC's F1 fell.
    ``patience > 0`` stops after that many passes without improvement. Returns what
    happened (passes run, best pass, validation size).
    """
    tr, va = (
        _split_validation(y, s.val_fraction)
        if s.val_fraction > 0
        else (torch.arange(len(y)), torch.arange(0))
    )
    counts = torch.bincount(y[tr], minlength=2).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts.clamp_min(1)))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    x_tr, y_tr = x[tr], y[tr]
    n = x_tr.shape[0]
    best = (float("inf"), 0, None)  # validation loss, pass, weights
    done = 0
    for epoch in range(1, s.epochs + 1):
        net.train()
        order = torch.randperm(n)
        for i in range(0, n, s.batch_size):
            idx = order[i : i + s.batch_size]
            if idx.numel() < 2:  # BatchNorm cannot train on one example
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        done = epoch
        if len(va):
            net.eval()
            with torch.no_grad():
                loss = float(loss_fn(net(x[va]), y[va]))
            if loss < best[0]:
                best = (loss, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
            elif s.patience and epoch - best[1] >= s.patience:
                break
    if best[2] is not None:
        net.load_state_dict(best[2])
    net.eval()
    return {"passes": done, "best_pass": best[1] or done, "n_validation": int(len(va))}


class _FeatureHead(nn.Module):
    """z-score the frozen features with training statistics, then the MLP."""

    def __init__(self, in_dim: int, settings: AtmsFcSettings) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for width in settings.hidden:
            layers += [nn.Linear(dim, width), nn.ReLU(), nn.Dropout(settings.dropout)]
            dim = width
        layers.append(nn.Linear(dim, len(CLASS_NAMES)))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp((f - self.feat_mean) / self.feat_std)


class AtmsFcClassifier(EmotionClassifier):
    """ATM-S-FC: frozen ATM-S features + a trainable MLP head.

    Parameters
    ----------
    n_channels, n_times, sfreq
        Shape of the (cropped) epochs.
    settings : AtmsFcSettings
        Head architecture and training.
    encoder : ATMS | None
        A trained encoder (:func:`models.decoders.atms.load_atms`). ``None`` builds a randomly
        initialised one (seed 0, the same for every fit): a random-feature model.
    standardize, seed
        Z-score channels with training statistics; seed of the head's training.
    """

    kind = "atms_fc"

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        sfreq: float,
        settings: AtmsFcSettings | None = None,
        *,
        encoder: ATMS | None = None,
        encoder_source: str = "",
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(n_channels, n_times, sfreq, standardize=standardize, seed=seed)
        self.settings = settings or AtmsFcSettings()
        if encoder is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                encoder = ATMS(ATMSConfig(n_channels=self.n_channels, n_times=self.n_times))
            encoder_source = ""
        cfg = encoder.config
        if (cfg.n_channels, cfg.n_times) != (self.n_channels, self.n_times):
            raise ClassifierError(
                f"encoder takes {cfg.n_channels} x {cfg.n_times} epochs, the data is "
                f"{self.n_channels} x {self.n_times} (set decoder.channels to the "
                f"{cfg.n_channels} channels the encoder was trained on, and decoder.window_s "
                "to its epoch length)"
            )
        self.encoder = encoder.eval().requires_grad_(False)
        self.encoder_source = encoder_source or "random-init"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = _FeatureHead(cfg.embed_dim, self.settings)

    @property
    def random_encoder(self) -> bool:
        """True when the encoder is randomly initialised (a random-feature model)."""
        return self.encoder_source == "random-init"

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen encoder features of standardised epochs (eval mode, in chunks)."""
        self.encoder.eval()
        return torch.cat([self.encoder(c) for c in torch.split(x, 256)]) if len(x) else x

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        f = self.features(x)
        self.head.feat_mean.copy_(f.mean(0))
        self.head.feat_std.copy_(f.std(0).clamp_min(1e-6))
        self.train_info = _train(self.head, f, y, self.settings)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        return self.head(self.features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        self.encoder.load_state_dict(enc, strict=True)
        self.head.load_state_dict(head, strict=True)

    def _metadata(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "encoder_config": json.loads(self.encoder.config.to_json()),
            "encoder_source": self.encoder_source,
        }


class EegNetClassifier(EmotionClassifier):
    """braindecode ``EEGNet`` trained end to end, kernel scaled to the data's rate."""

    kind = "eegnet"

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        sfreq: float,
        settings: EegNetSettings | None = None,
        *,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(n_channels, n_times, sfreq, standardize=standardize, seed=seed)
        with warnings.catch_warnings():  # braindecode's import warns about MNE montages
            warnings.simplefilter("ignore", FutureWarning)
            from braindecode.models import EEGNet

        self.settings = s = settings or EegNetSettings()
        self.kernel_length = scaled_kernel_length(s.kernel_length_128hz, self.sfreq)
        # the separable conv (16 samples after 4x pooling = 0.5 s at 128 Hz) scales too
        self.depthwise_kernel_length = scaled_kernel_length(16, self.sfreq)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = EEGNet(
                n_chans=self.n_channels,
                n_outputs=len(CLASS_NAMES),
                n_times=self.n_times,
                sfreq=self.sfreq,
                kernel_length=self.kernel_length,
                depthwise_kernel_length=self.depthwise_kernel_length,
                F1=s.f1,
                D=s.depth,
                drop_prob=s.dropout,
            ).eval()

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.train_info = _train(self.net, x, y, self.settings)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(x)

    def _state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)

    def _metadata(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "kernel_length": self.kernel_length}


CLASSIFIERS: dict[str, type[EmotionClassifier]] = {
    AtmsFcClassifier.kind: AtmsFcClassifier,
    EegNetClassifier.kind: EegNetClassifier,
}
"""Classifier kind (as in the protocol) -> class."""

DISPLAY_NAMES = {"atms_fc": "ATM-S-FC", "eegnet": "EEGNetv4"}


def make_classifier(
    kind: str,
    n_channels: int,
    n_times: int,
    sfreq: float,
    settings: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    encoder: ATMS | None = None,
) -> EmotionClassifier:
    """Build an unfitted classifier from the protocol's ``decoder`` section.

    Parameters
    ----------
    kind : str
        ``"atms_fc"`` or ``"eegnet"``.
    n_channels, n_times, sfreq
        Shape of the cropped epochs.
    settings : Mapping | None
        ``protocol.decoder.model_dump()``; ``None`` = the defaults. Its
        ``encoder_checkpoint`` is loaded unless ``encoder`` is given.
    seed : int
        Seed of initialisation and training.
    encoder : ATMS | None
        An already loaded encoder to share between folds.
    """
    settings = dict(settings or {})
    standardize = bool(settings.get("standardize", True))
    if kind == "atms_fc":
        head = AtmsFcSettings(**_tuple_lists(settings.get("atms_fc", {})))
        source = ""
        if encoder is None and settings.get("encoder_checkpoint"):
            source = str(settings["encoder_checkpoint"])
            encoder = load_atms(source, n_channels=n_channels, n_times=n_times)
        elif encoder is not None:
            source = getattr(encoder, "source", "") or "given"
        return AtmsFcClassifier(
            n_channels,
            n_times,
            sfreq,
            head,
            encoder=encoder,
            encoder_source=source,
            standardize=standardize,
            seed=seed,
        )
    if kind == "eegnet":
        net = EegNetSettings(**settings.get("eegnet", {}))
        return EegNetClassifier(n_channels, n_times, sfreq, net, standardize=standardize, seed=seed)
    raise ClassifierError(f"unknown classifier {kind!r}; expected one of {sorted(CLASSIFIERS)}")


def _tuple_lists(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_classifier(path: str | Path) -> EmotionClassifier:
    """Read any classifier written by :meth:`EmotionClassifier.save`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"classifier file {path} does not exist")
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT or meta.get("kind") not in CLASSIFIERS:
        raise CheckpointError(
            f"{path}: not an EEGS classifier file (format={meta.get('format')!r}, "
            f"kind={meta.get('kind')!r})"
        )
    try:
        shape = json.loads(meta["shape"])
        settings = json.loads(meta["settings"])
        standardize = json.loads(meta["standardize"])
        seed = int(meta["seed"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: incomplete classifier metadata ({err})") from None
    kind = meta["kind"]
    if kind == "atms_fc":
        cfg = ATMSConfig(**json.loads(meta["encoder_config"]))
        clf: EmotionClassifier = AtmsFcClassifier(
            shape["n_channels"],
            shape["n_times"],
            shape["sfreq"],
            AtmsFcSettings(**_tuple_lists(settings)),
            encoder=ATMS(cfg),
            encoder_source=json.loads(meta.get("encoder_source", '""')),
            standardize=standardize,
            seed=seed,
        )
    else:
        clf = EegNetClassifier(
            shape["n_channels"],
            shape["n_times"],
            shape["sfreq"],
            EegNetSettings(**settings),
            standardize=standardize,
            seed=seed,
        )
    net = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    try:
        clf._load_state(net)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored settings ({err})") from None
    clf.mean, clf.std = tensors["input.mean"], tensors["input.std"]
    clf.fitted = True
    return clf
