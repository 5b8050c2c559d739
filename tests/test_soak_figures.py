"""The soak's figures from its samples and events: windows and latency definitions."""

from __future__ import annotations

import pytest

from app.bench.soak import latency_series, rss_growth


@pytest.mark.timeout(30)
def test_growth_is_counted_over_the_loop_not_the_report_after_it():
    rows = [(float(t), "session", 100.0 + (0.0 if t <= 600 else 200.0)) for t in range(0, 700, 5)]
    over_all = rss_growth(rows, t0=0.0, warmup_s=60.0, window_s=60.0)["session"]
    assert over_all["growth_pct"] == pytest.approx(200.0)
    loop = rss_growth(rows, t0=0.0, warmup_s=60.0, window_s=60.0, t_end=600.0)["session"]
    assert loop["growth_pct"] == 0.0
    assert loop["within_goal"]
    assert loop["rss_mb_max"] == 300.0  # the peak still says what the report cost


@pytest.mark.timeout(30)
def test_round_ready_runs_from_the_presentations_request_to_its_batch():
    events = [
        # the presentation's request (it names the block), then the worker's own log line
        {"t_wall": 10.0, "event": "image_request", "round": 1, "block": "closed_loop"},
        {"t_wall": 10.01, "event": "image_request", "round": 1, "deadline_s": 10.0},
        # the presentation logs the batch as it receives it, the worker once it is sent
        {"t_wall": 10.25, "event": "image_batch", "round": 1, "block": "closed_loop"},
        {"t_wall": 10.3, "event": "image_batch", "round": 1, "image_ids": []},
        # the previous round's last epoch is published after the batch is ready
        {"t_wall": 11.0, "event": "epoch", "trial_id": 7, "latency_ms": 18.0},
    ]
    series = latency_series(events)
    assert series["epoch_latency_ms"] == [(11.0, 18.0)]
    ((t, ms),) = series["round_ready_latency_ms"]
    assert t == 10.25
    assert ms == pytest.approx(250.0)


@pytest.mark.timeout(60)
def test_a_child_that_ended_but_is_not_reaped_is_not_sampled(tmp_path):
    import subprocess
    import sys
    import time

    import psutil

    from app.bench.soak import RssSampler
    from workers.session_store import SessionStore

    store = SessionStore(tmp_path / "s").open(role="session")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(ended.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store.log("child_started", name="worker", pid=alive.pid)
        store.log("child_started", name="acquire", pid=ended.pid)  # a zombie: RSS 0
        sampler = RssSampler(tmp_path / "s", every_s=60)
        sampler.sample()
        names = {name for _, name, _ in sampler.rows}
        assert names == {"session", "worker"}
        assert all(mb > 0 for _, _, mb in sampler.rows)
    finally:
        for proc in (alive, ended):
            proc.kill()
            proc.wait(10)
        store.close()
