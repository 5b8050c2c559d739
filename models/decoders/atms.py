"""ATM-S, the EEG encoder of Li et al. (2024), and its checkpoint loaders.

ATM-S maps one EEG epoch (channels x samples, 0-1 s after image onset) to a 1024-d
vector in the image-embedding space it was trained against with a CLIP loss. It treats
each channel as a token: a linear layer embeds the channel's whole series, one
transformer layer mixes the channels, a ShallowNet-style temporal-spatial convolution
summarises them and a residual projection head outputs the embedding.

No pretrained weights ship with EEGS: a model built here is randomly initialised
unless a checkpoint is loaded. Two checkpoint layouts are read:

- ours: a ``.safetensors`` file written by :func:`save_atms` (architecture in its
  metadata);
- the ATM authors' ``state_dict`` (``torch.save`` of ``ATMS().state_dict()`` from
  github.com/dongyangli-del/EEG_Image_decode), read with ``torch.load(weights_only=True)``
  and renamed key by key (:func:`map_author_state_dict`).

Files are never unpickled: a checkpoint that holds Python objects other than tensors
fails with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "eegs-atms"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ATMSConfig:
    """Architecture of one ATM-S encoder (defaults: the paper's 17-channel model).

    Parameters
    ----------
    n_channels : int
        EEG channels (tokens) per epoch.
    n_times : int
        Samples per channel (250 = 0-1 s at 250 Hz).
    d_model, n_heads, d_ff, n_layers, dropout
        The channel-token transformer. As in the authors' code each head has
        ``d_model // n_heads`` dimensions (62 for 250 / 4).
    n_filters, temporal_kernel, pool_kernel, pool_stride, conv_dropout
        The ShallowNet-style convolution over each token's ``d_model`` features.
    embed_dim, proj_dropout
        The output embedding and the dropout of the projection's residual block.
    subject_token : bool
        Prepend one learned token (the authors' subject embedding). As in their
        code only the first ``n_channels`` tokens are kept after the transformer.
    """

    n_channels: int = 17
    n_times: int = 250
    d_model: int = 250
    n_heads: int = 4
    d_ff: int = 256
    n_layers: int = 1
    dropout: float = 0.25
    n_filters: int = 40
    temporal_kernel: int = 25
    pool_kernel: int = 51
    pool_stride: int = 5
    conv_dropout: float = 0.5
    embed_dim: int = 1024
    proj_dropout: float = 0.5
    subject_token: bool = False

    def __post_init__(self) -> None:
        for name in (
            "n_channels",
            "n_times",
            "d_model",
            "n_heads",
            "d_ff",
            "n_layers",
            "n_filters",
            "temporal_kernel",
            "pool_kernel",
            "pool_stride",
            "embed_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ATMSConfig.{name} must be a positive integer; got {value!r}")
        if self.d_model // self.n_heads < 1:
            raise ValueError(f"d_model ({self.d_model}) must be >= n_heads ({self.n_heads})")
        if self.conv_length < 1:
            raise ValueError(
                f"d_model ({self.d_model}) is too short for temporal_kernel "
                f"({self.temporal_kernel}) + pool_kernel ({self.pool_kernel})"
            )

    @property
    def conv_length(self) -> int:
        """Time steps left after the temporal convolution and the pooling."""
        after_conv = self.d_model - self.temporal_kernel + 1
        return (after_conv - self.pool_kernel) // self.pool_stride + 1

    @property
    def flat_dim(self) -> int:
        """Features entering the projection head (1440 for the defaults)."""
        return self.n_filters * self.conv_length

    def to_json(self) -> str:
        """Serialise the config as JSON (stored in checkpoint metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ATMSConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ATMSConfig keys {unknown}")
        return cls(**data)


class _Attention(nn.Module):
    """Multi-head self-attention whose heads have ``d_model // n_heads`` dims."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        inner = (d_model // n_heads) * n_heads
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, inner)
        self.key = nn.Linear(d_model, inner)
        self.value = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            proj(x).view(b, n, self.n_heads, -1).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class _EncoderLayer(nn.Module):
    """Post-norm transformer layer (attention, GELU feed-forward), as in the paper."""

    def __init__(self, cfg: ATMSConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attention(x)))
        y = self.drop(self.ff2(self.drop(F.gelu(self.ff1(x)))))
        return self.norm2(x + y)


class _Residual(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class ATMS(nn.Module):
    """The ATM-S encoder: ``(batch, n_channels, n_times)`` -> ``(batch, embed_dim)``.

    Randomly initialised: load weights with :func:`load_atms` (or train them with
    ``eegs train-encoder``) before using its output as semantic features.
    """

    def __init__(self, config: ATMSConfig | None = None) -> None:
        super().__init__()
        cfg = config or ATMSConfig()
        self.config = cfg
        self.embedding = nn.Linear(cfg.n_times, cfg.d_model)
        if cfg.subject_token:
            self.subject_token = nn.Parameter(torch.randn(1, cfg.d_model))
        self.embedding_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, cfg.n_filters, (1, cfg.temporal_kernel)),
            nn.AvgPool2d((1, cfg.pool_kernel), (1, cfg.pool_stride)),
            nn.BatchNorm2d(cfg.n_filters),
            nn.ELU(),
            nn.Conv2d(cfg.n_filters, cfg.n_filters, (cfg.n_channels, 1)),
            nn.BatchNorm2d(cfg.n_filters),
            nn.ELU(),
            nn.Dropout(cfg.conv_dropout),
        )
        self.projection = nn.Conv2d(cfg.n_filters, cfg.n_filters, (1, 1))
        self.proj_in = nn.Linear(cfg.flat_dim, cfg.embed_dim)
        self.proj_res = _Residual(
            nn.GELU(), nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.Dropout(cfg.proj_dropout)
        )
        self.proj_norm = nn.LayerNorm(cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of epochs (already cropped and scaled)."""
        cfg = self.config
        if x.ndim != 3 or x.shape[1] != cfg.n_channels or x.shape[2] != cfg.n_times:
            raise ValueError(
                f"ATM-S expects epochs of shape (batch, {cfg.n_channels}, {cfg.n_times}); "
                f"got {tuple(x.shape)}"
            )
        tokens = self.embedding(x)
        if cfg.subject_token:
            token = self.subject_token.expand(x.shape[0], 1, -1)
            tokens = torch.cat([token, tokens], dim=1)
        tokens = self.embedding_drop(tokens)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)[:, : cfg.n_channels]
        z = self.projection(self.tsconv(tokens.unsqueeze(1)))  # (b, filters, 1, length)
        z = z.flatten(2).transpose(1, 2).flatten(1)  # time-major, as the authors' Rearrange
        z = self.proj_in(z)
        return self.proj_norm(self.proj_res(z))


# -- our format ------------------------------------------------------------------------
def save_atms(model: ATMS, path: str | Path, **metadata: str) -> Path:
    """Write the encoder as safetensors with its architecture in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    meta.update({k: str(v) for k, v in metadata.items()})
    save_file(state, str(path), metadata=meta)
    return path


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; any failure is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, meta


# -- the authors' format ---------------------------------------------------------------
_AUTHOR_RULES: list[tuple[str, str]] = [
    (r"^encoder\.enc_embedding\.value_embedding\.", "embedding."),
    (
        r"^encoder\.encoder\.attn_layers\.(\d+)\.attention\.(query|key|value)_projection\.",
        r"layers.\1.attention.\2.",
    ),
    (
        r"^encoder\.encoder\.attn_layers\.(\d+)\.attention\.out_projection\.",
        r"layers.\1.attention.out.",
    ),
    (r"^encoder\.encoder\.attn_layers\.(\d+)\.(?:conv|linear)([12])\.", r"layers.\1.ff\2."),
    (r"^encoder\.encoder\.attn_layers\.(\d+)\.norm([12])\.", r"layers.\1.norm\2."),
    (r"^encoder\.encoder\.norm\.", "norm."),
    (r"^enc_eeg\.0\.tsconv\.", "tsconv."),
    (r"^enc_eeg\.0\.projection\.0\.", "projection."),
    (r"^proj_eeg\.0\.", "proj_in."),
    (r"^proj_eeg\.1\.fn\.1\.", "proj_res.1."),
    (r"^proj_eeg\.2\.", "proj_norm."),
    (r"^logit_scale$", "logit_scale"),
]
# Keys of the authors' model that its forward pass never uses.
_AUTHOR_UNUSED = re.compile(
    r"^(encoder\.enc_embedding\.(position_embedding|temporal_embedding|mask_token)"
    r"|encoder\.enc_embedding\.subject_embedding\.mask_embedding"
    r"|subject_wise_linear\.)"
)
_SUBJECT_TABLE = "encoder.enc_embedding.subject_embedding.subject_embedding.weight"
_SUBJECT_SHARED = "encoder.enc_embedding.subject_embedding.shared_embedding"


def map_author_state_dict(
    state: dict[str, torch.Tensor], subject: int | None = None
) -> dict[str, torch.Tensor]:
    """Rename the ATM authors' ``ATMS`` state dict to this module's keys.

    Parameters
    ----------
    state : dict
        The authors' state dict (a ``module.`` prefix from DataParallel is removed).
    subject : int | None
        Row of their subject-embedding table to use as the subject token; ``None``
        uses their shared token (what their model does for an unseen subject).

    Returns
    -------
    dict
        Tensors under this module's names. Keys the authors' forward pass never
        reads (positional and temporal embeddings, mask tokens, the unused
        ``subject_wise_linear``) are dropped; any other unknown key is an error.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for raw_key, value in state.items():
        key = raw_key.removeprefix("module.")
        if _AUTHOR_UNUSED.match(key) or key in (_SUBJECT_TABLE, _SUBJECT_SHARED):
            continue
        for pattern, repl in _AUTHOR_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                if re.search(r"\.ff[12]\.weight$", new) and value.ndim == 3:
                    value = value.squeeze(-1)  # Conv1d(kernel 1) == Linear
                out[new] = value
                break
        else:
            unknown.append(raw_key)
    if unknown:
        raise CheckpointError(
            f"keys not in the ATM-S layout: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    stripped = {k.removeprefix("module."): v for k, v in state.items()}
    if subject is not None:
        if _SUBJECT_TABLE not in stripped:
            raise CheckpointError("subject index given but the checkpoint has no subject table")
        table = stripped[_SUBJECT_TABLE]
        if not 0 <= subject < table.shape[0]:
            raise CheckpointError(f"subject {subject} not in 0..{table.shape[0] - 1}")
        out["subject_token"] = table[subject : subject + 1].clone()
    elif _SUBJECT_SHARED in stripped:
        out["subject_token"] = stripped[_SUBJECT_SHARED].reshape(1, -1).clone()
    return out


def config_from_state_dict(state: dict[str, torch.Tensor], **defaults: Any) -> ATMSConfig:
    """Infer the architecture from tensor shapes (our key names)."""
    try:
        d_model, n_times = state["embedding.weight"].shape
        n_filters, _, n_channels, _ = state["tsconv.4.weight"].shape
        temporal_kernel = state["tsconv.0.weight"].shape[-1]
        embed_dim = state["proj_in.weight"].shape[0]
        d_ff = state["layers.0.ff1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"not an ATM-S state dict: tensor {err} is missing") from None
    except ValueError as err:
        raise CheckpointError(f"not an ATM-S state dict: unexpected tensor rank ({err})") from None
    n_layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    inferred = dict(
        n_channels=int(n_channels),
        n_times=int(n_times),
        d_model=int(d_model),
        d_ff=int(d_ff),
        n_layers=n_layers,
        n_filters=int(n_filters),
        temporal_kernel=int(temporal_kernel),
        embed_dim=int(embed_dim),
        subject_token="subject_token" in state,
    )
    inferred.update(defaults)
    try:
        return ATMSConfig(**inferred)
    except ValueError as err:
        raise CheckpointError(f"impossible ATM-S shapes: {err}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict inside what ``torch.load`` returned (plain or wrapped)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return obj


def read_torch_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickle payload becomes a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: holds pickled Python objects besides tensors; it is not unpickled "
            f"(only torch.load(weights_only=True) or safetensors are read). Re-save the "
            f"plain state dict (torch.save(model.state_dict(), ...)) in a trusted "
            f"environment. Detail: {first}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: not a torch checkpoint ({err})") from None


def _is_torch_file(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    return head in (b"PK", b"\x80\x02") or head[:1] == b"\x80"


def load_atms(
    path: str | Path,
    *,
    n_channels: int | None = None,
    n_times: int | None = None,
    subject: int | None = None,
) -> ATMS:
    """Load an ATM-S encoder from our safetensors file or the authors' checkpoint.

    Parameters
    ----------
    path : str | Path
        ``.safetensors`` (ours) or a ``torch.save`` state dict (the authors').
    n_channels, n_times : int | None
        The data's shape; a checkpoint trained for another shape is refused with
        a message that says both.
    subject : int | None
        Authors' checkpoints only: which subject-embedding row to use.

    Returns
    -------
    ATMS
        The encoder in eval mode, on the CPU.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    meta: dict[str, str] = {}
    if _is_torch_file(path):
        state = _unwrap(read_torch_checkpoint(path), path)
        if any(
            k.removeprefix("module.").startswith(("encoder.enc_embedding", "enc_eeg."))
            for k in state
        ):
            try:
                state = map_author_state_dict(state, subject)
            except CheckpointError as err:
                raise CheckpointError(f"{path}: {err}") from None
        config = config_from_state_dict(state)
    else:
        state, meta = read_safetensors(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: safetensors file without EEGS ATM-S metadata (format="
                f"{meta.get('format')!r}); write it with models.decoders.atms.save_atms"
            )
        try:
            config = ATMSConfig.from_json(meta["config"])
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: bad ATM-S config in metadata ({err})") from None
    for name, want in (("n_channels", n_channels), ("n_times", n_times)):
        have = getattr(config, name)
        if want is not None and want != have:
            raise CheckpointError(
                f"{path}: encoder was built for {config.n_channels} channels x "
                f"{config.n_times} samples, but the data has {name} = {want}; use a "
                f"checkpoint trained on this montage/window or pick matching channels"
            )
    model = ATMS(config)
    check_state_shapes(model, state, path)
    model.load_state_dict(state, strict=True)
    model.checkpoint_metadata = meta
    model.source = str(path)
    return model.eval()


def check_state_shapes(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped tensors."""
    want = model.state_dict()
    problems = [
        f"'{k}' has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in want.items()
        if k in state and state[k].shape != v.shape
    ]
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing:
        problems.append(f"missing tensors {missing[:6]}")
    if extra:
        problems.append(f"unexpected tensors {extra[:6]}")
    if problems:
        raise CheckpointError(f"{path}: does not fit ATM-S {model.config}: " + "; ".join(problems))
