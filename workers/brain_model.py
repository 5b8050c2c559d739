"""The brain-model process: a simulated participant that streams EEG on LSL.

It behaves like an amplifier's LSL app (an outlet of µV samples stamped by a sample
counter anchored to the LSL clock, pushed in fixed chunks as they fall due) and
like a participant: it reads the session's JSON marker stream with a plain inlet,
and for every stimulus-onset marker it loads the image the marker names and adds
the simulated subject's response (:mod:`models.brain.response`), starting at the
display onset (the marker time plus the simulated display lag). Markers are read
just before each chunk is rendered, so a marker that arrives before its onset
sample is sent gets the whole response; one that arrives later loses the samples
already sent, as a real recording would have them without the response.

A marker whose image is missing or unreadable is logged and answered with
background EEG only (the photodiode still steps: the display did flip).

With a response stream (``presentation.response_stream``) it also answers the rating
screen like a person with a response box: each ``rating_onset`` marker (trial, scale,
low, high) is answered, after a response delay, by one press on an LSL string outlet,
``{"key": "<point>", "trial": ..., "scale": ...}`` stamped at the moment of the press.
The points and delays come from :class:`models.brain.ratings.RatingModel` (the
subject's hidden valence and arousal of that trial's image, mapped to the scale with
the subject's own noise and scale-use bias), drawn once per trial. Presses are queued
and sent by the streaming loop when due, so answering never holds up the EEG.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pylsl

from experiment_protocols.brain_model import BrainModelSettings
from models.brain.features import ImageError
from models.brain.realism import Realism, realism
from models.brain.response import BrainModel, StreamSimulator
from models.montage import ATM_CHANNELS, STANDARD_64
from workers import faults
from workers.errors import InputError
from workers.lsl_clock import SampleClock, make_eeg_info, push_chunk_at_clock
from workers.messages import parse_marker

logger = logging.getLogger("eegs.brain_model")

_RESOLVE_EVERY_S = 0.5
_MAX_FUTURE_S = 10.0
#: The presentation's marker of a rating question appearing (app/presentation/runner.py).
RATING_ONSET_EVENT = "rating_onset"
_MAX_TRIALS_KEPT = 4096  # trial -> image of recent onsets, for the ratings


class BrainModelError(InputError):
    """A setting, checkpoint or image that the brain model cannot use."""


@dataclass
class BrainModelConfig:
    """What one ``eegs brain-model`` process streams."""

    settings: BrainModelSettings
    name: str = "EEGS-EEG"
    markers: str = "EEGS-markers"
    duration_s: float | None = None
    responses: str = ""  # response-box stream to answer ratings on ('' = do not answer)
    rating_scale: tuple[int, int] = (1, 9)  # used when a rating_onset marker names none


@dataclass
class StreamStats:
    """What happened during one run."""

    samples: int = 0
    onsets: int = 0
    responses: int = 0
    image_errors: int = 0
    late_ms: list[float] = field(default_factory=list)
    answers: int = 0


def channel_list(spec: str) -> list[str]:
    """``'64'``, ``'atm17'`` or a comma-separated list of channel names."""
    key = spec.strip().lower()
    if key in ("", "64", "standard64"):
        return list(STANDARD_64)
    if key in ("17", "atm", "atm17"):
        return list(ATM_CHANNELS)
    return [ch.strip() for ch in spec.split(",") if ch.strip()]


def realism_of(settings: BrainModelSettings) -> Realism:
    """The realism preset ``settings`` name, with the numbers it sets itself."""
    return realism(settings.realism).replace(
        affect_gain=settings.affect_gain,
        faa_gain=settings.faa_gain,
    )


def build_model(settings: BrainModelSettings) -> BrainModel:
    """The simulated subject described by a protocol's ``[brain_model]`` section."""
    learned = None
    if settings.learned_model:
        from models.brain.learned import LearnedModelError, LearnedResponse

        try:
            learned = LearnedResponse.load(settings.learned_model, settings.learned_class or None)
        except LearnedModelError as err:
            raise BrainModelError(f"brain_model.learned_model: {err}") from None
    try:
        model = BrainModel(
            settings.subject_seed,
            sfreq=settings.sfreq,
            ch_names=list(settings.channels) or None,
            snr=settings.snr,
            response_uv=settings.response_uv,
            aperiodic_exponent=settings.aperiodic_exponent,
            alpha_hz=settings.alpha_hz,
            alpha_share=settings.alpha_share,
            line_noise_hz=settings.line_noise_hz,
            line_noise_uv=settings.line_noise_uv,
            blinks_per_min=settings.blinks_per_min,
            blink_uv=settings.blink_uv,
            trial_amplitude_sd=settings.trial_amplitude_sd,
            trial_latency_sd_ms=settings.trial_latency_sd_ms,
            display_lag_ms=settings.photodiode_lag_ms,
            display_jitter_ms=settings.photodiode_jitter_ms,
            learned=learned,
            family=settings.family,
            realism=realism_of(settings),
        )
    except ValueError as err:
        raise BrainModelError(f"brain_model: {err}") from None
    # the family is logged here, in the brain model's own log, and nowhere a reward reads
    logger.info("simulated subject %d, family %s", model.subject_seed, model.family)
    return model


_MAX_HASHED = 64 << 20  # a marker's sha256 is checked on files up to this size


def oracle(images: list[str | Path], subject_seed: int) -> list[dict[str, Any]]:
    """Hidden affect of each image for one subject. For evaluation only."""
    model = BrainModel(subject_seed)
    out = []
    for image in images:
        try:
            valence, arousal = model.affect(image)
        except ImageError as err:
            raise BrainModelError(str(err)) from None
        out.append({"image": str(image), "valence": valence, "arousal": arousal})
    return out


def single_threaded_blas():
    """Limit BLAS to one thread within a ``with`` block.

    The per-chunk products are tiny; waking a thread pool for each one costs more
    than it saves (5x slower on a busy machine).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class MarkerReader:
    """Finds the marker stream whenever it appears and drains it without blocking."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._resolver = pylsl.ContinuousResolver(prop="name", value=name, forget_after=5.0)
        self.inlet: pylsl.StreamInlet | None = None
        self._next_resolve = 0.0

    def pull(self) -> list[tuple[str, float]]:
        """Markers received since the last call, as (text, LSL time on this clock)."""
        now = pylsl.local_clock()
        if self.inlet is None:
            if now < self._next_resolve:
                return []
            self._next_resolve = now + _RESOLVE_EVERY_S
            found = [i for i in self._resolver.results() if i.channel_format() == pylsl.cf_string]
            if not found:
                return []
            inlet = pylsl.StreamInlet(
                found[0], max_buflen=360, processing_flags=pylsl.proc_clocksync, recover=True
            )
            try:
                inlet.open_stream(timeout=1.0)
            except (TimeoutError, pylsl.LostError) as err:
                logger.warning("cannot open marker stream '%s' yet: %s", self.name, err)
                return []
            self.inlet = inlet
            logger.info("reading markers from '%s' (%s)", self.name, found[0].hostname())
        try:
            samples, stamps = self.inlet.pull_chunk(timeout=0.0)
        except pylsl.LostError:
            logger.warning("marker stream '%s' lost; looking for it again", self.name)
            self.inlet = None
            return []
        return [(s[0], t) for s, t in zip(samples, stamps, strict=True)]

    def close(self) -> None:
        """Close the inlet."""
        if self.inlet is not None:
            self.inlet.close_stream()
            self.inlet = None


class Responder:
    """Answers the rating screen like a participant pressing a response box on LSL.

    ``shown(trial, image)`` notes each trial's image at its onset marker;
    ``question(marker, t)`` draws the trial's ratings (once per trial) when a
    ``rating_onset`` marker comes and queues the press of that scale's point, due its
    response delay after the question appeared; ``send_due()`` pushes the presses that
    are due (called by the streaming loop once per chunk: never blocks).
    """

    def __init__(
        self,
        name: str,
        model: BrainModel,
        *,
        scale: tuple[int, int] = (1, 9),
        seed: int | None = None,
    ) -> None:
        try:
            from models.brain.ratings import RatingModel
        except ImportError as err:
            raise BrainModelError(f"answering ratings needs models.brain.ratings: {err}") from None
        self.name = name
        self.model = model
        self.scale = (int(scale[0]), int(scale[1]))
        self.rating_model = RatingModel.draw(model.subject_seed)
        self.rng = np.random.default_rng(
            None if seed is None else [seed, model.subject_seed, 0x52415445]
        )
        info = pylsl.StreamInfo(
            name, "Responses", 1, 0, pylsl.cf_string, f"eegs-brain-model-responses-{name}"
        )
        info.desc().append_child_value("manufacturer", "EEGS brain model (simulated)")
        self.outlet = pylsl.StreamOutlet(info)
        self.images: OrderedDict[int, Path] = OrderedDict()
        self.drawn: OrderedDict[tuple[int, int, int], tuple[int, int, tuple[float, float]]] = (
            OrderedDict()
        )
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        self.answers = 0

    def shown(self, trial: Any, image: Path | None) -> None:
        """Note the image a trial showed (its onset marker)."""
        if not isinstance(trial, int) or isinstance(trial, bool) or image is None:
            return
        self.images[trial] = image
        self.images.move_to_end(trial)
        while len(self.images) > _MAX_TRIALS_KEPT:
            self.images.popitem(last=False)

    def question(self, marker: dict[str, Any], t_lsl: float) -> None:
        """A rating question appeared at ``t_lsl``: queue the answer of its scale."""
        trial, scale = marker.get("trial"), marker.get("scale")
        if scale not in ("valence", "arousal"):
            logger.warning("trial %s: no answer to a question of scale %r", trial, scale)
            return
        image = self.images.get(trial) if isinstance(trial, int) else None
        if image is None:
            logger.warning("trial %s: %s question about an unseen image; no answer", trial, scale)
            return
        low, high = marker.get("low"), marker.get("high")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            low, high = self.scale
        if high <= low:
            logger.warning("trial %s: scale %r to %r; no answer", trial, low, high)
            return
        key = (trial, low, high)
        if key not in self.drawn:
            try:
                valence, arousal = self.model.affect(image)
            except ImageError as err:
                logger.warning("trial %s: %s; no rating", trial, err)
                return
            try:
                self.drawn[key] = self.rating_model.rate(valence, arousal, low, high, self.rng)
            except ValueError as err:
                logger.warning("trial %s: no rating: %s", trial, err)
                return
            while len(self.drawn) > _MAX_TRIALS_KEPT:
                self.drawn.popitem(last=False)
        v_point, a_point, (v_delay, a_delay) = self.drawn[key]
        point, delay = (v_point, v_delay) if scale == "valence" else (a_point, a_delay)
        point = int(min(max(int(point), low), high))
        delay = float(delay) if np.isfinite(delay) and delay > 0 else 0.0
        text = json.dumps({"key": str(point), "trial": trial, "scale": scale})
        self._seq += 1
        heapq.heappush(self._due, (t_lsl + delay, self._seq, text))
        logger.info(
            "trial %s: %s %d, pressed %.0f ms after the question", trial, scale, point, delay * 1e3
        )

    def send_due(self, now: float | None = None) -> int:
        """Push the presses that are due, each stamped at its own press time."""
        now = pylsl.local_clock() if now is None else now
        n = 0
        while self._due and self._due[0][0] <= now:
            due, _, text = heapq.heappop(self._due)
            self.outlet.push_sample([text], due)
            n += 1
        self.answers += n
        return n

    def close(self) -> None:
        """Withdraw the outlet (presses not yet due are dropped)."""
        self._due.clear()
        del self.outlet


class BrainModelStream:
    """The outlet, the simulation and the marker reader of one process."""

    def __init__(self, config: BrainModelConfig, model: BrainModel | None = None) -> None:
        s = config.settings
        self.config = config
        self.model = model or build_model(s)
        self.sim: StreamSimulator = self.model.stream(
            s.noise_seed,
            photodiode=s.photodiode,
            photodiode_duration_s=s.photodiode_duration_s,
            photodiode_level=s.photodiode_level,
        )
        self.chunk = max(1, int(round(s.chunk_s * s.sfreq)))
        info = make_eeg_info(
            config.name,
            self.sim.ch_names,
            s.sfreq,
            ch_types=self.sim.ch_types,
            source_id=f"eegs-brain-model-{config.name}",
        )
        info.desc().append_child_value("manufacturer", "EEGS brain model (simulated)")
        self.outlet = pylsl.StreamOutlet(info, chunk_size=self.chunk, max_buffered=360)
        self.markers = MarkerReader(config.markers)
        self.responder = (
            Responder(config.responses, self.model, scale=config.rating_scale, seed=s.noise_seed)
            if config.responses
            else None
        )
        self.image_root = Path(s.image_root) if s.image_root else Path.cwd()
        self.clock: SampleClock | None = None
        self.stats = StreamStats()

    def run(self, duration_s: float | None = None, stop=lambda: False) -> StreamStats:
        """Stream until ``duration_s`` of samples are sent or ``stop()`` is true."""
        sfreq = self.model.sfreq
        self.clock = SampleClock(sfreq, lead_s=self.chunk / sfreq)
        total = None if duration_s is None else int(round(duration_s * sfreq))
        logger.info(
            "streaming '%s': %d EEG channels%s at %g Hz, subject seed %d",
            self.config.name,
            len(self.model.ch_names),
            " + photodiode" if self.sim.photodiode else "",
            sfreq,
            self.model.subject_seed,
        )
        k = 0
        while not stop() and (total is None or k < total):
            n = self.chunk if total is None else min(self.chunk, total - k)
            self.step(k, n)
            k += n
        self.stats.samples = k
        return self.stats

    def step(self, first: int, n: int, paced: bool = True) -> None:
        """Wait until samples ``first .. first + n - 1`` are due, apply markers, push them.

        ``paced=False`` pushes at once (benchmarks): timestamps still come from the
        sample counter.
        """
        if paced:
            self.clock.wait_until(float(self.clock.time_of(first + n - 1)))
        for text, t in self.markers.pull():
            self.handle_marker(text, t)
        if self.responder is not None:
            self.stats.answers += self.responder.send_due()
        block = self.sim.render(n).T
        if faults.active("nan"):  # eegs bench faults only: an amplifier sending garbage
            block = np.full_like(block, np.nan)
        if paced:
            push_chunk_at_clock(self.outlet, self.clock, first, block)
        else:
            stamps = self.clock.time_of(np.arange(first, first + n))
            self.outlet.push_chunk(block.astype(np.float32), stamps.tolist())

    def handle_marker(self, text: str, t_lsl: float) -> None:
        """Apply one marker (onset: schedule the response; offset: end the stimulus)."""
        s = self.config.settings
        try:
            marker = parse_marker(text)
        except ValueError as err:
            logger.warning("ignoring malformed marker %r: %s", text[:200], err)
            return
        t = t_lsl - self.clock.t0
        now = self.sim.next_sample / self.model.sfreq
        if abs(t - now) > _MAX_FUTURE_S:
            logger.warning(
                "ignoring marker %s: %.1f s away from the stream's time", text[:200], t - now
            )
            return
        if marker["event"] == s.offset_event:
            self.sim.offset(t)
            return
        if marker["event"] == RATING_ONSET_EVENT:
            if self.responder is not None:
                self.responder.question(marker, t_lsl)
            return
        if marker["event"] != s.onset_event:
            return
        self.stats.onsets += 1
        trial = marker.get("trial")
        path = self._image_path(marker)
        if self.responder is not None:
            self.responder.shown(trial, path)
        try:
            stim = self.sim.onset(path, t)
        except ImageError as err:
            self.stats.image_errors += 1
            logger.warning("trial %s: %s; background EEG only", trial, err)
            return
        except Exception:  # a participant never stops streaming (e.g. a learned model fails)
            self.stats.image_errors += 1
            logger.exception("trial %s: no response to %s; background EEG only", trial, path)
            return
        if stim is None:
            if "image" in marker:
                logger.warning("trial %s: 'image' %r is not a path; background only", trial,
                               marker["image"])  # fmt: skip
            else:  # e.g. a timing check's flash: the photodiode only
                logger.debug("trial %s: no image in the marker; background only", trial)
            return
        self.stats.responses += 1
        lost_ms = stim.lost_samples / self.model.sfreq * 1e3
        self.stats.late_ms.append(lost_ms)
        logger.info(
            "trial %s: response to %s from sample %d%s",
            trial,
            path.name,
            stim.first,
            f" (its first {lost_ms:.0f} ms had already been sent)" if lost_ms else "",
        )

    def _image_path(self, marker: dict[str, Any]) -> Path | None:
        image = marker.get("image")
        if not isinstance(image, str) or not image:
            return None
        path = Path(image)
        if not path.is_absolute():
            path = self.image_root / path
        expected = marker.get("sha256")
        if isinstance(expected, str) and path.is_file() and path.stat().st_size < _MAX_HASHED:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != expected.lower():
                logger.warning("%s: sha256 differs from the marker's; the file changed", path)
        return path

    def close(self) -> None:
        """Close the marker inlet and withdraw the outlets."""
        self.markers.close()
        if self.responder is not None:
            self.responder.close()
        del self.outlet


def run(config: BrainModelConfig, stop=lambda: False) -> StreamStats:
    """Entry point of the ``eegs brain-model`` process."""
    stream = BrainModelStream(config)
    try:
        with single_threaded_blas():
            stats = stream.run(config.duration_s, stop)
    finally:
        stream.close()
    late = np.asarray(stream.stats.late_ms)
    logger.info(
        "stopped after %.1f s: %d onsets, %d responses, %d unreadable images, %d ratings "
        "answered%s",
        stream.stats.samples / stream.model.sfreq,
        stream.stats.onsets,
        stream.stats.responses,
        stream.stats.image_errors,
        stream.stats.answers,
        f", response start lost: max {late.max():.1f} ms" if late.size else "",
    )
    return stats
