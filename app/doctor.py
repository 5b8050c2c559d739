"""Pre-flight checks before a session: what would make it fail, found before it starts.

Each check returns a :class:`Finding`; ``FAIL`` means the session cannot run as
configured, ``WARN`` that it can but something is worth a look.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from experiment_protocols import Protocol

OK, WARN, FAIL = "ok", "warn", "fail"

#: Free disk below which a session is refused / warned about (GB). A 64-channel 1000 Hz
#: hour of XDF is ~1 GB; images and epochs add a few hundred MB.
_DISK_FAIL_GB, _DISK_WARN_GB = 1.0, 5.0


@dataclass(frozen=True)
class Finding:
    """The result of one check."""

    check: str
    status: str
    detail: str

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def check_streams(protocol: Protocol, timeout: float) -> list[Finding]:
    """The EEG stream is visible, at the expected rate, with the montage's channels."""
    import pylsl

    s, pre = protocol.streams, protocol.preprocessing
    found = pylsl.resolve_byprop("name", s.eeg, 1, timeout)
    if not found:
        return [Finding("eeg stream", FAIL, f"no LSL stream named '{s.eeg}' within {timeout} s")]
    info = found[0]
    out = [
        Finding(
            "eeg stream",
            OK,
            f"'{s.eeg}' on {info.hostname()}: {info.channel_count()} channels, "
            f"{info.nominal_srate():g} Hz, type '{info.type()}'",
        )
    ]
    if s.eeg_type and info.type() != s.eeg_type:
        out.append(Finding("eeg type", FAIL, f"type '{info.type()}', expected '{s.eeg_type}'"))
    if info.nominal_srate() <= 0:
        out.append(Finding("sampling rate", FAIL, "the stream has an irregular rate"))
    elif s.sfreq is not None and abs(info.nominal_srate() - s.sfreq) > 1e-6:
        out.append(
            Finding("sampling rate", FAIL, f"{info.nominal_srate():g} Hz, expected {s.sfreq:g} Hz")
        )
    names = _channel_labels(pylsl.StreamInlet(info))
    renamed = [pre.rename.get(ch, ch) for ch in names]
    missing = [ch for ch in pre.montage if ch not in renamed]
    if missing:
        out.append(Finding("channels", FAIL, f"montage channels {missing} not in {renamed}"))
    else:
        out.append(Finding("channels", OK, f"{len(pre.montage) or len(names)} channels used"))
    out += _reward_channels(protocol, renamed)
    out += _decoder_channels(protocol, list(pre.montage) or renamed)
    markers = pylsl.resolve_byprop("name", s.markers, 1, 0.5)
    out.append(
        Finding("marker stream", OK, f"'{s.markers}' visible")
        if markers
        else Finding(
            "marker stream",
            WARN,
            f"'{s.markers}' not visible yet (it starts with the presentation)",
        )
    )
    return out


def _reward_channels(protocol: Protocol, names: list[str]) -> list[Finding]:
    """The reward's own check of the stream's channels (``RewardMode.channel_check``)."""
    from models.rewards.base import reward_class

    r = protocol.generation.reward
    check = reward_class(r.mode).channel_check(r, names)
    if check is None:
        return []  # decoder and encoder rewards: their channel checks are at load time
    return [Finding("reward channels", *check)]


def _decoder_channels(protocol: Protocol, names: list[str]) -> list[Finding]:
    """decoder.channels must all reach the epochs, or the calibration decoder cannot fit."""
    from models.decoders.classifiers import ClassifierError, channel_picks

    wanted = protocol.decoder.channels
    if not wanted:
        return []
    try:
        channel_picks(names, wanted)
    except ClassifierError as err:
        return [Finding("decoder channels", FAIL, str(err))]
    return [Finding("decoder channels", OK, f"the decoders read {len(wanted)} channels")]


def _channel_labels(inlet) -> list[str]:
    info = inlet.info(timeout=5.0)
    ch = info.desc().child("channels").child("channel")
    labels = []
    for _ in range(info.channel_count()):
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling()
    return labels


def check_disk(session_dir: Path) -> Finding:
    """Enough free space where the session will be written."""
    probe = session_dir
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    status = FAIL if free_gb < _DISK_FAIL_GB else WARN if free_gb < _DISK_WARN_GB else OK
    return Finding("disk", status, f"{free_gb:.1f} GB free at {probe}")


def check_gpu(protocol: Protocol) -> Finding:
    """A CUDA GPU is there when the generator needs one."""
    import torch

    from experiment_protocols.generation import BACKENDS

    backend = protocol.generation.backend
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return Finding("gpu", OK, f"{name} (CUDA {torch.version.cuda})")
    status = WARN if BACKENDS[backend].needs_gpu else OK
    return Finding("gpu", status, f"no CUDA GPU; generation backend '{backend}' runs on the CPU")


def check_display() -> Finding:
    """A display exists for the presentation window."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return Finding("display", OK, f"DISPLAY={os.environ.get('DISPLAY', '')}")
    return Finding("display", WARN, "no display: run the presentation under xvfb-run or --headless")


def run_checks(protocol: Protocol, session_dir: Path, timeout: float = 3.0) -> list[Finding]:
    """Every pre-flight check, in the order a person would fix them."""
    return [
        *check_streams(protocol, timeout),
        check_gpu(protocol),
        check_disk(session_dir),
        check_display(),
    ]
