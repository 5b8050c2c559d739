"""The bench figures measure what their names say (issue 13): drift against the
receiver's clock, mne-lsl epochs paired with markers by event time."""

from __future__ import annotations

import json
import queue
import threading
from types import SimpleNamespace

import numpy as np
import pylsl
import pytest
from conftest import run_eegs

from app.bench import acquisition as acq_bench
from app.bench import brain_model as bm_bench
from workers.lsl_clock import SampleClock, make_eeg_info


def _synthetic_chunks(drift_ms_per_hour: float, seconds: float, seed: int = 0):
    """Chunk timestamps drifting by a known rate against the receiver, one-sided jitter."""
    rng = np.random.default_rng(seed)
    arrival_true = 5000.0 + np.arange(0.0, seconds, 0.02)  # receiver clock, 20 ms chunks
    stamps = 5000.0 + (arrival_true - 5000.0) * (1 + drift_ms_per_hour / 3.6e6)
    jitter = rng.exponential(0.002, arrival_true.size)  # only ever late
    jitter += (rng.random(arrival_true.size) < 0.02) * rng.uniform(0.02, 0.2, arrival_true.size)
    return stamps, arrival_true + 0.0003 + jitter


@pytest.mark.parametrize("drift", [36.0, -100.0, 0.0])
def test_clock_drift_estimator_recovers_an_injected_drift(drift):
    stamps, arrivals = _synthetic_chunks(drift, seconds=600.0)
    fit = bm_bench.clock_drift_fit(stamps, arrivals)
    assert fit is not None
    assert fit["windows"] == bm_bench.DRIFT_WINDOWS
    assert fit["drift_ms_per_hour"] == pytest.approx(drift, abs=2.0)
    assert fit["stderr_ms_per_hour"] < 2.0
    assert bm_bench.clock_drift_ms_per_hour(stamps, arrivals) == fit["drift_ms_per_hour"]


def test_clock_drift_is_null_with_a_note_when_the_run_is_too_short():
    stamps, arrivals = _synthetic_chunks(-100.0, seconds=1.5)
    assert bm_bench.clock_drift_fit(stamps, arrivals) is None
    assert bm_bench.clock_drift_ms_per_hour(stamps[:3], arrivals[:3], min_span_s=0) is None
    receiver = SimpleNamespace(chunks=list(zip(arrivals, stamps, range(stamps.size), strict=True)))
    figures = bm_bench._Receiver.drift(receiver)
    assert figures["drift_ms_per_hour"] is None
    assert figures["drift_fit"] is None
    assert "too short" in figures["drift_note"]


def test_paced_drift_comes_from_the_receivers_clock_not_the_stamp_formula(stream_name):
    """A real outlet pushes in real time at 1000 Hz but stamps as if at 1010 Hz.

    The old figure, |(t_last - t_first) - (n - 1) / sfreq| at the stamping rate, is
    zero by construction; the receiver's clock sees the stamps fall 1 % behind.
    """
    true_fs, stamp_fs, chunk, n_ch, seconds = 1000.0, 1010.0, 20, 4, 3.0
    n_total = int(seconds * true_fs)
    outlet = pylsl.StreamOutlet(make_eeg_info(stream_name, [f"C{i}" for i in range(n_ch)], true_fs))
    rx = bm_bench._Receiver(stream_name, n_total, n_ch, arrivals=True)
    rx.start()
    assert outlet.wait_for_consumers(10)
    pace = SampleClock(true_fs)  # real time, as an amplifier would push
    t0 = pace.t0
    block = np.zeros((chunk, n_ch), dtype=np.float32)

    def push() -> None:
        for first in range(0, n_total, chunk):
            idx = np.arange(first, first + chunk)
            pace.wait_until(float(pace.time_of(idx[-1])))
            outlet.push_chunk(block, (t0 + idx / stamp_fs).tolist())

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    pusher.join(30)
    rx.join(10)
    rx.stop.set()
    rx.inlet.close_stream()
    assert rx.n == n_total
    ts = rx.stamps[: rx.n]
    old = abs((ts[-1] - ts[0]) - (rx.n - 1) / stamp_fs) / (rx.n / stamp_fs / 3600) * 1e3
    assert old < 1.0  # the formula that made the stamps cannot see anything
    figures = rx.drift()
    expected = (true_fs / stamp_fs - 1) * 3.6e6  # about -35 600 ms per hour
    assert figures["drift_ms_per_hour"] == pytest.approx(expected, rel=0.2)
    assert figures["drift_fit"]["span_s"] > 2.0
    assert "drift_note" not in figures


def test_brain_model_bench_reports_drift_only_from_the_paced_run():
    result = run_eegs(
        "bench", "brain-model", "--minutes", "0.02", "--paced-s", "3", "--channels", "4",
        "--images", "2", "--image-px", "32", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert "max_deviation_ms" not in figures
    assert "drift_note" not in figures
    assert np.isfinite(figures["drift_ms_per_hour"])
    assert figures["drift_fit"]["span_s"] >= bm_bench.MIN_DRIFT_SPAN_S
    assert figures["drift_fit"]["windows"] >= 4
    assert figures["paced_samples_received"] == 3000


def test_match_by_event_time_pairs_by_time_not_arrival_order():
    markers = 100.0 + 0.3 * np.arange(6)
    # delivered out of order, marker 2 never delivered, one stray epoch, each t = 0
    # up to a sample after its marker (mne-lsl's first sample at or after it)
    delivered = [markers[1] + 0.0004, markers[0], markers[3] + 0.0009, 100.45,
                 markers[5] + 0.0002, markers[4] + 0.0001]  # fmt: skip
    pairs, missed, unmatched = acq_bench.match_by_event_time(delivered, markers, tol=0.001)
    assert pairs == [(1, 0), (0, 1), (2, 3), (5, 4), (4, 5)]
    assert missed == [2]
    assert unmatched == [3]
    by_order = list(zip(range(len(delivered)), range(len(markers)), strict=False))
    assert set(by_order) != set(pairs)  # the old pairing: epoch 2 (marker 3) as marker 2


@pytest.mark.parametrize("now", [100.0, 100.0037, 100.0191, 517.25])
def test_aligned_source_clock_puts_every_window_end_mid_chunk(now):
    sfreq, chunk, window_end = 1000.0, 20, 107.5
    t0 = acq_bench.aligned_t0(window_end, sfreq, chunk, now)
    assert now + 0.05 <= t0 < now + 0.05 + chunk / sfreq
    for k in range(5):  # markers 300 samples apart keep the phase
        pos = (window_end + k * 0.3 - t0) * sfreq
        assert pos % chunk == pytest.approx(chunk / 2, abs=1e-6)


def test_match_by_event_time_gives_each_marker_one_epoch():
    markers = [1.0, 2.0]
    pairs, missed, unmatched = acq_bench.match_by_event_time(
        [1.0008, 1.0001, 5.0], markers, tol=0.001
    )
    assert pairs == [(1, 0)]  # the closer of the two
    assert missed == [1]
    assert unmatched == [0, 2]
    assert acq_bench.match_by_event_time([], markers, 0.001) == ([], [0, 1], [])
    assert acq_bench.match_by_event_time([1.0], [], 0.001) == ([], [], [0])


def test_mne_lsl_poller_reports_each_epochs_event_time(stream_name, monkeypatch):
    """The poller's epoch times are mne-lsl's t = 0 samples, one per marker it got."""
    from mne_lsl.stream import epochs as mne_epochs

    # the poller wraps mne-lsl's _prune_events: undo that when the test ends
    monkeypatch.setattr(mne_epochs, "_prune_events", mne_epochs._prune_events)
    sfreq, chunk, n_ch = 250.0, 5, 4
    eeg = pylsl.StreamOutlet(make_eeg_info(stream_name, [f"C{i}" for i in range(n_ch)], sfreq))
    ev = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"{stream_name}-events", "Markers", 1, 0, pylsl.cf_int32, "ev")
    )
    stop = threading.Event()
    clock = SampleClock(sfreq)

    def stream() -> None:
        rng = np.random.default_rng(0)
        first = 0
        while not stop.is_set():
            idx = np.arange(first, first + chunk)
            clock.wait_until(float(clock.time_of(idx[-1])))
            data = rng.normal(0, 10, (chunk, n_ch)).astype(np.float32)
            eeg.push_chunk(data, clock.time_of(idx).tolist())
            first += chunk

    source = threading.Thread(target=stream, daemon=True)
    source.start()
    out: queue.Queue = queue.Queue()
    poller = threading.Thread(  # stops once the 4 markers it gets have epochs
        target=acq_bench._mne_lsl_poller,
        args=(stream_name, 4, pylsl.local_clock() + 45.0, out),
        daemon=True,
    )
    poller.start()
    try:
        assert out.get(timeout=30) == "ready"
        markers = pylsl.local_clock() + 1.0 + 0.4 * np.arange(5)
        for k, t in enumerate(markers):
            if k != 2:  # marker 2 never reaches mne-lsl
                ev.push_sample([1], float(t))
        delivered = out.get(timeout=40)
    finally:
        stop.set()
        source.join(5)
        poller.join(10)
    pairs, missed, unmatched = acq_bench.match_by_event_time(
        [t for t, _ in delivered], markers, acq_bench.match_tolerance(sfreq)
    )
    assert missed == [2]
    assert unmatched == []
    assert [k for _, k in pairs] == [0, 1, 3, 4]
    slack = 0.002  # LSL clock correction of mne-lsl's two inlets
    for i, k in pairs:
        onset, arrival = delivered[i]
        assert -slack <= onset - markers[k] < 1.0 / sfreq + slack  # first sample at/after
        assert arrival > markers[k] + acq_bench._TMAX - slack  # once its window ended


def test_count_ratio_interval_holds_one_for_equal_counts_and_not_for_a_doubling():
    from app.bench._dashboard import count_ratio

    same = count_ratio(50, 50)
    assert same["ratio"] == 1.0
    assert same["ci95"][0] < 1.0 < same["ci95"][1]
    assert same["ci95"][1] > 1.4  # 50 drops cannot tell 1.05 from 1.4
    doubled = count_ratio(200, 100)
    assert doubled["ratio"] == 2.0
    assert doubled["ci95"][0] > 1.5
    assert count_ratio(0, 0) == {"ratio": None, "ci95": None}
    assert count_ratio(4, 0)["ci95"][1] is None  # no upper bound without a baseline


def test_quantile_ratio_interval_holds_one_for_one_distribution_and_not_for_a_slower_one():
    from app.bench._dashboard import quantile_ratio

    rng = np.random.default_rng(3)
    a, b = 12 + rng.gamma(2.0, 0.3, 400), 12 + rng.gamma(2.0, 0.3, 400)
    same = quantile_ratio(b, a, 95)
    assert same["ci95"][0] < 1.0 < same["ci95"][1]
    assert same["ci95"][0] <= same["ratio"] <= same["ci95"][1]
    slower = quantile_ratio(a * 1.1, a, 95)  # every epoch 10 % later
    assert slower["ratio"] == 1.1
    assert slower["ci95"][0] > 1.0
    assert quantile_ratio([], a, 50) == {"ratio": None, "ci95": None}
