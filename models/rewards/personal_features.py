"""The personal estimator's feature maps: functions of the epochs, never of the ratings.

Each map reads every epoch the same way whatever the ratings (what one learns, it
learns from the calibration epochs alone), so each candidate model of
:mod:`models.rewards.personal` stays linear in the ratings and its permutation test can
run hundreds of shufflings at once, and a shuffle of the ratings leaves every map as it
was. What a map reads is found in the epochs themselves (their channel names, rate and
window), so the same maps serve a 4-channel headset and a 64-channel cap:

- ``evoked`` (:class:`EvokedComponent`): the window means of one spatial component,
  the one whose evoked response is strongest against the trials' total variance:
  xDAWN with a single class (Rivet et al. 2009, IEEE TBME 56:2035; pyRiemann's
  ``Xdawn``), fitted on every calibration epoch without their ratings. Where valence
  moves a component of the evoked response (an LPP, an N170) that is spread over many
  channels, one component holds it with a few features instead of the channels' noise;
- ``erp`` (:class:`ErpWindows`): baseline-corrected mean amplitude per channel in
  consecutive 50 ms windows from 0.05 s to the end of the epoch: the features of the
  shrinkage-LDA ERP decoder (Blankertz et al. 2011), over the whole post-stimulus epoch
  the protocol cuts (early visual components, the N170, the LPP, slow waves);
- ``spectral`` (:class:`BandPower`): log10 band power per channel in theta (4-8 Hz),
  alpha (8-13 Hz) and beta (13-30 Hz) from 0.2 s to the end of the epoch (Welch, Hann
  segments of 0.5 s, half overlap); every hemispheric asymmetry is a direction in it;
- ``asymmetry`` (:class:`AsymmetryIndex`): the training-free frontal alpha asymmetry
  index itself (the personal reward's fallback, over the protocol's homologous pairs or
  those the montage holds), one number per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.rewards.asymmetry import AsymmetryReward
from models.rewards.base import EpochData, RewardError

BANDS_HZ: tuple[tuple[str, float, float], ...] = (
    ("theta", 4.0, 8.0),
    ("alpha", 8.0, 13.0),
    ("beta", 13.0, 30.0),
)


#: The evoked component's ridge on the trials' covariance, relative to its mean eigenvalue.
RIDGE = 1e-3


@dataclass(frozen=True)
class FeatureSpec:
    """The maps' settings (defaults: the module docstring)."""

    erp_start_s: float = 0.05
    erp_bin_s: float = 0.05
    spectral_start_s: float = 0.2
    welch_segment_s: float = 0.5
    bands_hz: tuple[tuple[str, float, float], ...] = BANDS_HZ
    min_spectral_s: float = 0.25  # a shorter post-stimulus window gives no band power

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_json`."""
        return cls(
            erp_start_s=float(d["erp_start_s"]),
            erp_bin_s=float(d["erp_bin_s"]),
            spectral_start_s=float(d["spectral_start_s"]),
            welch_segment_s=float(d["welch_segment_s"]),
            bands_hz=tuple((str(n), float(lo), float(hi)) for n, lo, hi in d["bands_hz"]),
            min_spectral_s=float(d["min_spectral_s"]),
        )


@dataclass(frozen=True)
class Geometry:
    """Channel names, sampling rate, start and length of the epochs a map reads."""

    ch_names: tuple[str, ...]
    sfreq: float
    tmin: float
    n_times: int

    def sample(self, t: float) -> int:
        """Index of the sample at ``t`` s."""
        return int(round((t - self.tmin) * self.sfreq))

    @property
    def t_end(self) -> float:
        """Time just after the last sample."""
        return self.tmin + self.n_times / self.sfreq


class FeatureMap:
    """Epochs (n, channels, times) µV -> features (n, d); ``standardise`` its columns.

    ``reads_erp``: the map reads the evoked response; where no candidate shows signal,
    the estimate is the mean of these maps' candidates. ``sign``: the known direction of
    a one-feature map (its value grows with valence), None when learnt from the ratings.
    ``learnt`` is what :meth:`fit` learnt from the epochs (None for a fixed map): saved
    with the estimator.
    """

    name = ""
    standardise = True
    reads_erp = False
    sign: float | None = None
    learnt: np.ndarray | None = None

    def fit(self, data: np.ndarray) -> FeatureMap:
        """Learn from the calibration epochs (n, channels, times), never their ratings."""
        return self

    def transform(self, data: np.ndarray, epochs: Sequence[EpochData]) -> np.ndarray:
        """Features of every epoch (``data`` stacked from ``epochs``)."""
        raise NotImplementedError


class ErpWindows(FeatureMap):
    """Baseline-corrected window means per channel (µV, not standardised)."""

    name = "erp"
    standardise = False  # amplitudes are commensurate; the shrinkage sees their scale
    reads_erp = True

    def __init__(self, geo: Geometry, spec: FeatureSpec) -> None:
        edges = np.arange(spec.erp_start_s, geo.t_end + 1e-9, spec.erp_bin_s)
        self.spans = [
            (geo.sample(a), geo.sample(b))
            for a, b in zip(edges[:-1], edges[1:], strict=True)
            if geo.sample(a) >= 0 and geo.sample(b) <= geo.n_times and geo.sample(b) > geo.sample(a)
        ]
        if not self.spans:
            raise RewardError(
                f"the epoch ({geo.tmin:g} to {geo.t_end:g} s) holds no {spec.erp_bin_s:g} s "
                f"window after {spec.erp_start_s:g} s"
            )
        self.base = geo.sample(0.0) if geo.sample(0.0) > 0 else 0

    def baselined(self, data: np.ndarray) -> np.ndarray:
        """The epochs less their pre-stimulus mean (as they are when none is recorded)."""
        return data - data[..., : self.base].mean(-1, keepdims=True) if self.base else data

    def transform(self, data: np.ndarray, epochs: Sequence[EpochData]) -> np.ndarray:
        """(n, channels x windows), channel-major."""
        x = self.baselined(data)
        means = np.stack([x[..., a:b].mean(-1) for a, b in self.spans], axis=-1)
        return means.reshape(len(x), -1)


class EvokedComponent(FeatureMap):
    """Window means (µV, as :class:`ErpWindows`) of the strongest evoked component."""

    name = "evoked"
    standardise = False
    reads_erp = True

    def __init__(self, geo: Geometry, spec: FeatureSpec, learnt: np.ndarray | None = None) -> None:
        if len(geo.ch_names) < 2:
            raise RewardError("one channel: no spatial component to find")
        self.windows = ErpWindows(Geometry(("component",), geo.sfreq, geo.tmin, geo.n_times), spec)
        self.post = slice(max(geo.sample(0.0), 0), geo.n_times)
        self.n_channels = len(geo.ch_names)
        if learnt is not None and np.asarray(learnt).shape != (1, self.n_channels):
            raise RewardError(
                f"the evoked component's filter has shape {np.asarray(learnt).shape}, "
                f"not (1, {self.n_channels})"
            )
        self.learnt = None if learnt is None else np.asarray(learnt, dtype=np.float64)

    def fit(self, data: np.ndarray) -> EvokedComponent:
        """The single-class xDAWN filter of the baseline-corrected post-stimulus epochs."""
        from pyriemann.spatialfilters import Xdawn

        x = self.windows.baselined(np.asarray(data, dtype=np.float64))[..., self.post]
        total = np.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[2])
        # a common-average reference leaves the channels' covariance singular
        total += RIDGE * np.trace(total) / len(total) * np.eye(len(total))
        xdawn = Xdawn(nfilter=1, estimator="scm", baseline_cov=total)
        xdawn.fit(x, np.zeros(len(x), dtype=int))
        self.learnt = np.asarray(xdawn.filters_[:1], dtype=np.float64)
        return self

    def transform(self, data: np.ndarray, epochs: Sequence[EpochData]) -> np.ndarray:
        """(n, windows)."""
        if self.learnt is None:
            raise RewardError("the evoked component was not fitted on calibration epochs")
        return self.windows.transform(np.einsum("kc,nct->nkt", self.learnt, data), epochs)


class BandPower(FeatureMap):
    """log10 band power per channel and band (standardised)."""

    name = "spectral"

    def __init__(self, geo: Geometry, spec: FeatureSpec) -> None:
        s0, s1 = max(geo.sample(spec.spectral_start_s), 0), geo.n_times
        if s1 - s0 < int(round(spec.min_spectral_s * geo.sfreq)):
            raise RewardError(
                f"the epoch holds less than {spec.min_spectral_s:g} s after "
                f"{spec.spectral_start_s:g} s for band power"
            )
        top = max(hi for _, _, hi in spec.bands_hz)
        if top >= geo.sfreq / 2:
            raise RewardError(f"band up to {top:g} Hz is not below Nyquist ({geo.sfreq / 2:g} Hz)")
        self.span = slice(s0, s1)
        self.nperseg = min(s1 - s0, int(round(spec.welch_segment_s * geo.sfreq)))
        self.sfreq = geo.sfreq
        self.bands = spec.bands_hz

    def transform(self, data: np.ndarray, epochs: Sequence[EpochData]) -> np.ndarray:
        """(n, channels x bands), channel-major."""
        from scipy.signal import welch

        freqs, psd = welch(data[..., self.span], fs=self.sfreq, nperseg=self.nperseg,
                           noverlap=self.nperseg // 2, detrend="constant", axis=-1)  # fmt: skip
        out = []
        for _, lo, hi in self.bands:
            keep = (freqs >= lo) & (freqs < hi)
            if not keep.any():
                raise RewardError(f"no Welch frequency in the band {lo:g}-{hi:g} Hz")
            out.append(np.log10(psd[..., keep].mean(-1) + 1e-12))
        return np.stack(out, axis=-1).reshape(len(data), -1)


class AsymmetryIndex(FeatureMap):
    """The training-free asymmetry index (log alpha power, right minus left)."""

    name = AsymmetryReward.mode
    sign = 1.0  # less left-frontal alpha (a larger right-minus-left power) when pleasant

    def __init__(self, geo: Geometry, index: AsymmetryReward) -> None:
        if not index.reads(list(geo.ch_names)):
            raise RewardError(f"no homologous frontal pair in {list(geo.ch_names)[:8]}")
        x = np.zeros((1, len(geo.ch_names), geo.n_times))
        index.asymmetry(x, geo.ch_names, geo.sfreq, geo.tmin)  # its window is in the epoch
        self.index = index
        self.geo = geo

    def transform(self, data: np.ndarray, epochs: Sequence[EpochData]) -> np.ndarray:
        """(n, 1)."""
        g = self.geo
        return self.index.asymmetry(data, g.ch_names, g.sfreq, g.tmin)[:, None]


def build_maps(
    geo: Geometry,
    spec: FeatureSpec,
    index: AsymmetryReward | None,
    learnt: dict[str, np.ndarray] | None = None,
) -> tuple[list[FeatureMap], dict[str, str]]:
    """Every map these epochs can feed, and why each other one cannot.

    ``learnt``: what each learning map learnt (a saved estimator's); without it, call
    each map's ``fit`` on the calibration epochs.
    """
    learnt = learnt or {}
    maps: list[FeatureMap] = []
    skipped: dict[str, str] = {}
    makers = [
        ("evoked", lambda: EvokedComponent(geo, spec, learnt.get("evoked"))),
        ("erp", lambda: ErpWindows(geo, spec)),
        ("spectral", lambda: BandPower(geo, spec)),
    ]
    if index is not None:
        makers.append((AsymmetryIndex.name, lambda: AsymmetryIndex(geo, index)))
    for name, make in makers:
        try:
            maps.append(make())
        except RewardError as err:
            skipped[name] = str(err)
    return maps, skipped


def index_settings(index: AsymmetryReward) -> dict[str, Any]:
    """The asymmetry index's settings (JSON)."""
    return {"pairs": [list(p) for p in index.pairs], "band_hz": list(index.band_hz),
            "window_s": list(index.window_s), "alpha_scale": index.alpha_scale}  # fmt: skip


def index_from_settings(d: dict[str, Any]) -> AsymmetryReward:
    """Inverse of :func:`index_settings`."""
    return AsymmetryReward(
        [tuple(p) for p in d["pairs"]], tuple(d["band_hz"]), tuple(d["window_s"]),
        float(d["alpha_scale"]),
    )  # fmt: skip
