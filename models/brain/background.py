"""Ongoing (background) EEG of the simulated participant, generated chunk by chunk.

The background is the sum of

- aperiodic 1/f^beta activity: white noise shaped by a cascade of pole-zero pairs
  (the classic approximation of a power law, spaced evenly in log-frequency), mixed
  through smooth scalp patterns of randomly placed sources plus a local part per
  channel, so that neighbouring channels correlate as under volume conduction;
- alpha: narrow-band noise (a two-pole resonator at the subject's individual alpha
  frequency, ~2 Hz wide, so that it waxes and wanes) from one posterior source and
  one source over each frontal hemisphere (at fixed positions, or at the subject's own
  when :class:`BackgroundSpec` names them: subject families draw them so that the
  frontal asymmetry's topography differs between people); the stimulus response
  modulates each source's gain (event-related desynchronisation, frontal asymmetry);
- sensor noise: white, independent per channel;
- optional line noise (a sinusoid whose amplitude and phase differ per channel) and
  blinks (a Poisson process; each blink is a ~300 ms bump strongest at the
  frontopolar channels and fading with distance from the eyes).

All filters keep their state between chunks and the random numbers are drawn in
time-major order, so the signal does not depend on the chunk size: rendering 10 s
at once gives the same samples as rendering them 20 ms at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

#: Background variance shares (of the channel-averaged variance).
_SENSOR_SHARE = 0.03
_LOCAL_SHARE = 0.3  # of the aperiodic variance, independent per channel
_N_SOURCES = 24
_SOURCE_WIDTH_RAD = 0.55
_APERIODIC_LOW_HZ = 0.3
_ALPHA_BANDWIDTH_HZ = 2.0
_FRONTAL_ALPHA_SHARE = 0.25  # frontal alpha sources' variance relative to posterior
#: Default centres of the left and right frontal alpha sources and their width (rad).
FRONTAL_ALPHA_CENTRES = ((-0.45, 0.6, 0.65), (0.45, 0.6, 0.65))
FRONTAL_ALPHA_WIDTH = 0.4
_BLINK_S = 0.3
_EYES = np.array([0.0, 0.97, -0.25])  # in front of and below Fpz
_BLINK_DECAY_RAD = 0.5  # blinks fall to ~1/3 at Fz, ~1/10 at Cz (of Fp1/Fp2)
_MIN_GAIN = 0.05


def sphere_gaussian(pos: np.ndarray, centre: np.ndarray, width_rad: float) -> np.ndarray:
    """Gaussian of the great-circle distance from ``centre``, for unit positions ``pos``."""
    c = centre / np.linalg.norm(centre)
    ang = np.arccos(np.clip(pos @ c, -1.0, 1.0))
    return np.exp(-0.5 * (ang / width_rad) ** 2)


def powerlaw_sos(exponent: float, sfreq: float, f_low: float = _APERIODIC_LOW_HZ) -> np.ndarray:
    """Second-order sections whose power spectrum falls as 1/f^``exponent`` above ``f_low``.

    Poles are placed two per decade from ``f_low`` to 0.45 ``sfreq``; each is followed
    by a zero ``exponent / 2`` of a pole spacing above it, so that the amplitude slope
    averages ``-exponent / 2`` decades per decade (``0 < exponent <= 2``).
    """
    if not 0 < exponent <= 2:
        raise ValueError(f"aperiodic exponent must be in (0, 2], got {exponent}")
    per_decade = 2.0
    f_high = 0.45 * sfreq
    n = max(1, int(np.floor(np.log10(f_high / f_low) * per_decade)) + 1)
    poles_hz = f_low * 10 ** (np.arange(n) / per_decade)
    zeros_hz = poles_hz * 10 ** (exponent / 2 / per_decade)
    zeros_hz = zeros_hz[zeros_hz < f_high]

    def warp(f: np.ndarray) -> np.ndarray:  # pre-warp for the bilinear transform
        return -2 * sfreq * np.tan(np.pi * np.minimum(f, 0.49 * sfreq) / sfreq)

    z, p, k = signal.bilinear_zpk(warp(zeros_hz), warp(poles_hz), 1.0, sfreq)
    return signal.zpk2sos(z, p, k)


def resonator_sos(freq: float, bandwidth: float, sfreq: float) -> np.ndarray:
    """A two-pole resonator: white noise in, narrow-band noise around ``freq`` out."""
    r = np.exp(-np.pi * bandwidth / sfreq)
    w0 = 2 * np.pi * freq / sfreq
    return np.array([[1.0, 0.0, 0.0, 1.0, -2 * r * np.cos(w0), r * r]])


def sos_variance(sos: np.ndarray, sfreq: float, seconds: float = 40.0) -> float:
    """Output variance of ``sos`` for unit-variance white input (from the impulse response)."""
    impulse = np.zeros(int(seconds * sfreq))
    impulse[0] = 1.0
    h = signal.sosfilt(sos, impulse)
    return float(h @ h)


@dataclass
class BackgroundSpec:
    """Everything that defines one subject's background, in µV."""

    sfreq: float
    pos: np.ndarray  # (n_ch, 3) unit vectors of the streamed channels
    ref_pos: np.ndarray  # (64, 3) unit vectors of the reference montage (for scaling)
    fp_pos: np.ndarray  # (2, 3) unit vectors of Fp1 and Fp2 (blink amplitude reference)
    rms_uv: float  # channel-averaged RMS over the reference montage
    exponent: float
    alpha_hz: float
    alpha_share: float
    line_hz: float
    line_uv: float
    blinks_per_min: float
    blink_uv: float
    # the subject's own frontal alpha sources (left, right); the defaults are everyone's
    frontal_alpha_centres: tuple[tuple[float, float, float], ...] = FRONTAL_ALPHA_CENTRES
    frontal_alpha_width: float = FRONTAL_ALPHA_WIDTH


class BackgroundEEG:
    """Stateful generator of background EEG, one chunk after another.

    Parameters
    ----------
    spec : BackgroundSpec
        Montage, amplitudes and rhythms.
    layout_rng : numpy.random.Generator
        Draws the subject's source layout (fixed per subject).
    noise_rng : numpy.random.Generator
        Draws the ongoing noise and blinks (differs per run).
    """

    n_alpha = 3  # posterior, left frontal, right frontal

    def __init__(
        self,
        spec: BackgroundSpec,
        layout_rng: np.random.Generator,
        noise_rng: np.random.Generator,
    ) -> None:
        self.spec = spec
        self.sfreq = spec.sfreq
        n_ch = spec.pos.shape[0]
        self.n_ch = n_ch
        self._rng = noise_rng
        self._blink_rng = np.random.default_rng(noise_rng.integers(2**63))

        # Smooth aperiodic sources on the upper head (z > -0.2).
        centres = layout_rng.normal(size=(_N_SOURCES, 3))
        centres[:, 2] = np.abs(centres[:, 2])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

        def patterns(pos: np.ndarray) -> np.ndarray:
            return np.stack([sphere_gaussian(pos, c, _SOURCE_WIDTH_RAD) for c in centres], 1)

        left, right = (np.asarray(c, dtype=float) for c in spec.frontal_alpha_centres)

        def alpha_patterns(pos: np.ndarray) -> np.ndarray:
            post = sphere_gaussian(pos, np.array([0.0, -0.85, 0.35]), 0.6)
            lf = sphere_gaussian(pos, left, spec.frontal_alpha_width)
            rf = sphere_gaussian(pos, right, spec.frontal_alpha_width)
            scale = np.array([1.0, np.sqrt(_FRONTAL_ALPHA_SHARE), np.sqrt(_FRONTAL_ALPHA_SHARE)])
            return np.stack([post, lf, rf], 1) * scale

        self._ap_sos = powerlaw_sos(spec.exponent, spec.sfreq)
        self._alpha_sos = resonator_sos(spec.alpha_hz, _ALPHA_BANDWIDTH_HZ, spec.sfreq)
        self._alpha_b, self._alpha_a = self._alpha_sos[0, :3], self._alpha_sos[0, 3:]
        ap_var = sos_variance(self._ap_sos, spec.sfreq)
        al_var = sos_variance(self._alpha_sos, spec.sfreq)

        # Scale every part so that the reference montage's mean variance is rms_uv**2.
        total = spec.rms_uv**2
        ap_share = 1.0 - spec.alpha_share - _SENSOR_SHARE
        ref_mix = patterns(spec.ref_pos)
        smooth_var = (ref_mix**2).sum(1).mean() * ap_var
        self._mix = patterns(spec.pos) * np.sqrt(total * ap_share * (1 - _LOCAL_SHARE) / smooth_var)
        self._local_sd = np.sqrt(total * ap_share * _LOCAL_SHARE / ap_var)
        ref_alpha = alpha_patterns(spec.ref_pos)
        alpha_var = (ref_alpha**2).sum(1).mean() * al_var
        self._alpha_mix = alpha_patterns(spec.pos) * np.sqrt(total * spec.alpha_share / alpha_var)
        self._sensor_sd = np.sqrt(total * _SENSOR_SHARE)

        # Filter states: aperiodic per channel, alpha per source.
        self._ap_zi = np.zeros((self._ap_sos.shape[0], n_ch, 2))
        self._alpha_zi = np.zeros((self.n_alpha, 2))
        self._n_white = _N_SOURCES + n_ch + self.n_alpha + n_ch

        # Artefacts.
        self._line_amp = spec.line_uv * layout_rng.lognormal(0.0, 0.3, n_ch)
        self._line_phase = layout_rng.uniform(0, 2 * np.pi, n_ch)

        def blink_pattern(pos: np.ndarray) -> np.ndarray:
            dist = np.arccos(np.clip(pos @ (_EYES / np.linalg.norm(_EYES)), -1, 1))
            return np.exp(-dist / _BLINK_DECAY_RAD)

        self._blink_pattern = blink_pattern(spec.pos) / blink_pattern(spec.fp_pos).mean()
        n_blink = int(round(_BLINK_S * spec.sfreq))
        self._blink_wave = np.sin(np.pi * np.arange(n_blink) / n_blink) ** 2
        self._blinks: list[tuple[int, float]] = []  # (start sample, amplitude µV)
        self._next_blink = self._draw_blink_gap(0.0)
        self.next_sample = 0
        # warm the filters up so that the first samples are already stationary
        self._warm_up(int(5 * spec.sfreq))

    def _draw_blink_gap(self, after: float) -> float:
        rate = self.spec.blinks_per_min / 60.0
        if rate <= 0:
            return np.inf
        return after + self._blink_rng.exponential(self.sfreq / rate)

    def _warm_up(self, n: int) -> None:
        white = self._white(n)
        _, self._ap_zi = signal.sosfilt(
            self._ap_sos, self._aperiodic_input(white), axis=1, zi=self._ap_zi
        )
        _, self._alpha_zi = self._alpha(white)

    def _white(self, n: int) -> np.ndarray:
        """Unit white noise for every source, (n_sources, n), drawn in time-major order.

        float32 draws are twice as fast; the filters run in float64.
        """
        return self._rng.standard_normal((n, self._n_white), dtype=np.float32).T.astype(float)

    def _alpha(self, white: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        source = white[_N_SOURCES + self.n_ch : -self.n_ch]
        return signal.lfilter(self._alpha_b, self._alpha_a, source, axis=1, zi=self._alpha_zi)

    def _aperiodic_input(self, white: np.ndarray) -> np.ndarray:
        return (
            self._mix @ white[:_N_SOURCES]
            + self._local_sd * white[_N_SOURCES : _N_SOURCES + self.n_ch]
        )

    def render(self, n: int, alpha_gain: np.ndarray | None = None) -> np.ndarray:
        """The next ``n`` samples, (n_channels, n) in µV.

        ``alpha_gain`` (3, n) multiplies the alpha sources (posterior, left, right
        frontal) over this chunk; ``None`` leaves them at 1.
        """
        white = self._white(n)
        ap, self._ap_zi = signal.sosfilt(
            self._ap_sos, self._aperiodic_input(white), axis=1, zi=self._ap_zi
        )
        alpha, self._alpha_zi = self._alpha(white)
        if alpha_gain is not None:
            alpha = alpha * np.maximum(alpha_gain, _MIN_GAIN)
        out = ap
        out += self._alpha_mix @ alpha
        out += self._sensor_sd * white[-self.n_ch :]
        first = self.next_sample
        if self.spec.line_uv > 0:
            t = np.arange(first, first + n) / self.sfreq
            out += self._line_amp[:, None] * np.sin(
                2 * np.pi * self.spec.line_hz * t[None, :] + self._line_phase[:, None]
            )
        if self.spec.blinks_per_min > 0:
            self._add_blinks(out, first, n)
        self.next_sample = first + n
        return out

    def _add_blinks(self, out: np.ndarray, first: int, n: int) -> None:
        while self._next_blink < first + n:
            start = int(np.ceil(self._next_blink))
            amp = self.spec.blink_uv * self._blink_rng.lognormal(0.0, 0.2)
            self._blinks.append((start, amp))
            self._next_blink = self._draw_blink_gap(self._next_blink + len(self._blink_wave))
        keep = []
        wave = self._blink_wave
        for start, amp in self._blinks:
            lo, hi = max(start, first), min(start + len(wave), first + n)
            if hi > lo:
                out[:, lo - first : hi - first] += (
                    amp * self._blink_pattern[:, None] * wave[None, lo - start : hi - start]
                )
            if start + len(wave) > first + n:
                keep.append((start, amp))
        self._blinks = keep
