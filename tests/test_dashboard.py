"""The experimenter's dashboard in a real browser (Debian's Chromium, driven by Playwright).

A 1-round pilot with its dashboard: the page shows values that change, the pause button
pauses the presentation (the pause marker appears on the marker stream), a wrong token
gets 403, and the delay from an event to the page is measured; killing the dashboard
does not stop the session. The page survives a worker restart. Quality metrics and the
image route are checked on their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from helpers import MarkerReader, events_named, wait_for_event, wait_until

from app.bench._dashboard import CHROMIUM, CHROMIUM_ARGS
from app.dashboard import OBSERVER_TOKEN_ENV, TOKEN_ENV
from app.dashboard.quality import Thresholds, channel_quality
from app.dashboard.server import safe_image

#: The goal is 250 ms (p95, event to page); a loaded 2-core test machine gets slack.
LATENCY_BOUND_MS = 2000.0
#: With one more CPU-bound process beside the session: a page that keeps up. The goal there,
#: 250 ms (docs/architecture.md 12), is a figure to report, not to time in a test: this test
#: reads 70-95 ms on a quiet 2-core machine and up to 392 ms beside CI's other jobs; a page
#: that falls behind (what it guards against) read 1343-2600 ms.
LOADED_BOUND_MS = 1000.0
#: Seconds the page is measured under that load.
LOADED_S = 10.0


@pytest.fixture
def browser():
    """Headless Chromium of the system (never downloaded), closed when the test ends."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "bash setup.sh installs chromium (apt)"
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


def _status(url: str, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError:
        return 0  # nobody serves yet


def _ws_status(url: str) -> int:
    """The HTTP status a websocket handshake gets (101 when accepted)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(url, open_timeout=10):
            return 101
    except InvalidStatus as err:
        return err.response.status_code


def _short_protocol(tmp_path: Path) -> Path:
    """Pilot protocol: 6 calibration trials, one round of 8, 2 validation trials, no ratings."""
    text = (REPO / "experiment_protocols" / "pilot.toml").read_text()
    text = re.sub(
        r'kind = "calibration"\nn_trials = \d+', 'kind = "calibration"\nn_trials = 6', text
    )
    text = re.sub(r'kind = "validation"\nn_trials = \d+', 'kind = "validation"\nn_trials = 2', text)
    text = re.sub(r"(\[presentation\.ratings\][^\n]*\n)enabled = true", r"\1enabled = false", text)
    assert "enabled = false" in text
    path = tmp_path / "dash.toml"
    path.write_text(text)
    return path


def _page_text(page, sel: str) -> str:
    return page.locator(sel).inner_text()


@pytest.mark.timeout(900)
def test_dashboard_during_a_pilot(tmp_path, processes, browser, free_port):
    out = tmp_path / "session"
    log = (tmp_path / "pilot.log").open("w")
    pilot = processes.eegs(
        "pilot",
        "--out",
        str(out),
        "--protocol",
        str(_short_protocol(tmp_path)),
        "--rounds",
        "1",
        "--headless",
        "--reward",
        "asymmetry",
        "--dashboard-port",
        str(free_port),
        stdout=log,
        stderr=log,
    )
    started = wait_for_event(out, "dashboard_started", 90, proc=pilot)
    url, observer = started["url"], started["observer_url"]
    assert url.startswith(f"http://127.0.0.1:{free_port}/?token=")
    for ev in events_named(out, "child_started"):
        processes.adopt(ev["pid"])
    base = url.split("?")[0]
    wait_until(lambda: _status(url) == 200, 60, 0.2)

    # tokens: a missing or wrong one gets 403 on the page, the websocket and the controls
    assert _status(base) == 403
    assert _status(base + "?token=wrong") == 403
    assert _status(base + "static/plotly.min.js?token=wrong") == 403
    ws = base.replace("http://", "ws://") + "ws"
    assert _ws_status(ws + "?token=wrong") == 403
    token = url.split("token=")[1]
    assert _ws_status(ws + "?token=" + token) == 101
    obs_token = observer.split("token=")[1]
    assert _status(base + "control?token=" + obs_token, b'{"command": "pause"}') == 403
    assert _status(base + "control?token=wrong", b'{"command": "pause"}') == 403
    assert _status(f"{base}image?token={token}&path=../../../../etc/passwd") == 404

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.eegs.messages > 3", timeout=30_000)
    assert page.locator("#pause").is_visible()

    # values that change: the trial, the EEG trace, the epoch count (the worker's start can
    # take minutes on a loaded machine)
    wait_for_event(out, "presentation_ready", 400, proc=pilot)
    page.wait_for_function(
        "/^[0-9]+$/.test(document.getElementById('trial').textContent)", timeout=90_000
    )
    trial0 = _page_text(page, "#trial")
    samples0 = page.evaluate("window.eegs.eegSamples")
    page.wait_for_function(
        f"document.getElementById('trial').textContent !== '{trial0}'", timeout=30_000
    )
    assert page.evaluate("window.eegs.eegSamples") > samples0
    assert int(_page_text(page, "#epochs")) >= 1
    wait_until(lambda: "up" in _page_text(page, "#worker"), 30)

    # pause from the page, with its confirmation: the marker stream says so
    protocol = tomllib.loads((out / "protocol.toml").read_text())
    reader = MarkerReader(protocol["streams"]["markers"])
    try:
        dialogs: list[str] = []

        def accept(dialog) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        page.click("#pause")
        pause = reader.wait_for("pause", timeout=30)
        assert "after_trial" in pause
        page.wait_for_function("window.eegs.state === 'paused'", timeout=10_000)
        assert any("Pause" in d for d in dialogs)
        assert any(e["command"] == "pause" for e in events_named(out, "remote_control"))
        page.click("#resume")
        reader.wait_for("resume", timeout=30)
        page.wait_for_function("window.eegs.state === 'running'", timeout=10_000)
    finally:
        reader.close()

    # the delay from an event (its writer's time, a marker's flip) to the page, so far
    lat = np.asarray(page.evaluate("window.eegs.latencies"))
    assert len(lat) >= 20
    p50, p95 = np.percentile(lat, [50, 95])
    server = np.percentile(page.evaluate("window.eegs.serverLatencies"), [50, 95])
    report = {
        "n": len(lat),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "server_part_p50_p95_ms": np.round(server, 1).tolist(),
    }
    assert p95 < LATENCY_BOUND_MS, report

    # a healthy session raises no alarm, from the stream's first samples on
    source = next(e for e in events_named(out, "child_started") if e["name"] == "brain-model")
    assert time.time() - source["t_wall"] > 20
    assert page.evaluate("window.eegs.alerts") == []

    # the same with one more CPU-bound process at normal priority beside the session
    hog = processes.start([sys.executable, "-c", "while True: pass"])
    try:
        page.evaluate("window.eegs.latencies = []")
        time.sleep(LOADED_S)
        loaded = np.asarray(page.evaluate("window.eegs.latencies"))
    finally:
        os.kill(hog.pid, signal.SIGKILL)
        hog.wait(10)
    report["loaded_one_cpu_hog"] = {
        "n": len(loaded),
        "p50_ms": round(float(np.percentile(loaded, 50)), 1) if len(loaded) else None,
        "p95_ms": round(float(np.percentile(loaded, 95)), 1) if len(loaded) else None,
    }
    (tmp_path / "latency.json").write_text(json.dumps(report))
    print(f"dashboard update delay: {report}")
    assert len(loaded) >= 20, report
    assert report["loaded_one_cpu_hog"]["p95_ms"] <= LOADED_BOUND_MS, report
    shot = os.environ.get("EEGS_DASHBOARD_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)

    # the observer's page has no controls
    obs = browser.new_page()
    obs.goto(observer)
    obs.wait_for_function("window.eegs.messages > 0", timeout=30_000)
    assert not obs.locator("#pause").is_visible()
    obs.close()
    assert not errors, errors

    # the dashboard dies: the session goes on to its end
    dash = next(e for e in events_named(out, "child_started") if e["name"] == "dashboard")
    os.kill(dash["pid"], signal.SIGKILL)
    assert pilot.wait(300) == 0, (tmp_path / "pilot.log").read_text()[-3000:]
    crashed = [e for e in events_named(out, "child_crashed") if e["name"] == "dashboard"]
    assert crashed
    assert crashed[0]["optional"]
    assert events_named(out, "session_status")[-1]["status"] == "completed"

    # the finished session's timeline: read-only, every trial there
    env = {**os.environ, TOKEN_ENV: "t" * 22}
    port = free_port + 1 if free_port < 65000 else free_port - 1
    processes.eegs("dashboard", str(out), "--port", str(port), env=env)
    timeline = f"http://127.0.0.1:{port}/?token={'t' * 22}"
    wait_until(lambda: _status(timeline) == 200, 60, 0.2)
    page.goto(timeline)
    page.wait_for_function("window.eegs.snapshot !== null", timeout=30_000)
    assert not page.locator("#pause").is_visible()
    n_trials = len(events_named(out, "trial"))
    assert page.evaluate("window.eegs.snapshot.loop.counts.trials") == n_trials == 16
    assert (
        _status(f"http://127.0.0.1:{port}/control?token={'t' * 22}", b'{"command":"pause"}') == 503
    )
    img = page.evaluate("window.eegs.snapshot.images.items[0].path")
    assert _status(f"http://127.0.0.1:{port}/image?token={'t' * 22}&path={img}") == 200


@pytest.mark.timeout(600)
def test_page_survives_a_worker_restart(tmp_path, processes, browser, free_port, stream_name):
    text = (REPO / "experiment_protocols" / "pilot.toml").read_text()
    text = text.replace(
        "[generation]\n", f'[generation]\nendpoint = "tcp://127.0.0.1:{free_port}"\n', 1
    )
    text += f'\n[streams]\neeg = "{stream_name}-eeg"\nmarkers = "{stream_name}-markers"\n'
    proto = tmp_path / "worker.toml"
    proto.write_text(text)
    session = tmp_path / "session"
    args = ("worker", "--protocol", str(proto), "--session", str(session))
    worker = processes.eegs(*args)
    wait_for_event(session, "generation_ready", 400, proc=worker)
    port = free_port + 1 if free_port < 65000 else free_port - 1
    env = {**os.environ, TOKEN_ENV: "c" * 22, OBSERVER_TOKEN_ENV: "o" * 22}
    processes.eegs(
        "dashboard",
        "--session",
        str(session),
        "--protocol",
        str(proto),
        "--port",
        str(port),
        env=env,
    )
    url = f"http://127.0.0.1:{port}/?token={'c' * 22}"
    wait_until(lambda: _status(url) == 200, 60, 0.2)
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function(
        "document.getElementById('worker').textContent.startsWith('up')", timeout=30_000
    )
    assert "procedural on cpu" in _page_text(page, "#worker")

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    page.wait_for_function(
        "document.getElementById('worker').textContent.startsWith('NOT REACHABLE')",
        timeout=30_000,
    )
    n0 = page.evaluate("window.eegs.messages")
    processes.eegs(*args)
    page.wait_for_function(
        "document.getElementById('worker').textContent.startsWith('up')", timeout=400_000
    )
    assert page.evaluate("window.eegs.messages") > n0  # the same page kept updating


@pytest.mark.timeout(30)
def test_quality_flags_each_fault_and_not_a_clean_channel():
    sfreq, n = 250.0, 1000
    rng = np.random.default_rng(0)
    t = np.arange(n) / sfreq
    clean = 8 * rng.standard_normal(n) + 10 * np.sin(2 * np.pi * 10 * t)
    x = np.stack(
        [
            clean,
            0.05 * rng.standard_normal(n),  # flat
            clean + 40 * np.sin(2 * np.pi * 50 * t),  # line noise
            clean * 15,  # high amplitude
            clean + 100 * t,  # drifts 400 µV in 4 s
        ]
    )
    flags = [row["flags"] for row in channel_quality(x, sfreq, Thresholds())]
    assert flags == [[], ["flat"], ["line_noise"], ["high_amplitude"], ["drift"]]
    sixty = Thresholds(line_hz=60.0)
    assert channel_quality(clean[None] + 40 * np.sin(2 * np.pi * 60 * t), sfreq, sixty)[0][
        "flags"
    ] == ["line_noise"]


@pytest.mark.timeout(30)
def test_image_route_stays_inside_the_session(tmp_path):
    session = tmp_path / "session"
    (session / "images" / "round-00").mkdir(parents=True)
    inside = session / "images" / "round-00" / "a.png"
    inside.write_bytes(b"\x89PNG")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG")
    (session / "images" / "link.png").symlink_to(outside)
    (session / "notes.txt").write_text("x")
    roots = [session]
    assert safe_image(str(inside), roots) == inside.resolve()
    assert safe_image("images/round-00/a.png", roots) == inside.resolve()
    assert safe_image(str(outside), roots) is None
    assert safe_image("images/../../secret.png", roots) is None
    assert safe_image(str(session / "images" / "link.png"), roots) is None
    assert safe_image(str(session / "notes.txt"), roots) is None
    assert safe_image("/etc/passwd", roots) is None
    assert safe_image("", roots) is None


def _serve_view(view, seconds: float) -> None:
    """Drive ``view`` for ``seconds`` as the server does: a tick every 50 ms, quality every 1 s."""
    from app.dashboard.view import QUALITY_EVERY_S

    end = time.monotonic() + seconds
    next_quality = 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_quality:
            next_quality = time.monotonic() + QUALITY_EVERY_S
            view.quality_ready(view.compute_quality())
        view.tick()
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_alerts_judge_the_stream_and_each_channel_only_on_evidence(tmp_path, stream_name):
    """Real LSL samples through the dashboard's own inlet, the server's clocks, short windows.

    A stream found but silent gets no alert within the grace period, one after it; a
    healthy stream none until its first full window and none after; a channel made flat
    one alert once its whole window is flat, and one when it is good again; a stream that
    stops, the stall alert.
    """
    import threading

    import pylsl

    from app.dashboard.sources import EEGSource
    from app.dashboard.view import View
    from workers.lsl_clock import make_eeg_info

    outlet = pylsl.StreamOutlet(make_eeg_info(stream_name, ["A", "B", "C"], 250.0))
    pushing, flat, stop = threading.Event(), threading.Event(), threading.Event()

    def stream() -> None:  # 250 Hz of 10 µV noise while pushing (paced); B at 0 while flat
        rng = np.random.default_rng(0)
        due = 0.0
        while not stop.wait(0.02):
            if not pushing.is_set():
                due = time.monotonic()
                continue
            n = int((time.monotonic() - due) * 250)
            if n:
                due += n / 250
                x = 10 * rng.standard_normal((n, 3)).astype(np.float32)
                if flat.is_set():
                    x[:, 1] = 0.0
                outlet.push_chunk(x.tolist())

    pusher = threading.Thread(target=stream, daemon=True)
    pusher.start()
    eeg = EEGSource(stream_name)
    view = View(tmp_path, eeg=eeg, quality_window_s=1.0, first_sample_grace_s=1.5)

    def texts() -> list[str]:
        return [a["text"] for a in view.alerts]

    try:
        _serve_view(view, 0.3)  # before the stream is even found
        wait_until(lambda: eeg.connected, 20)
        _serve_view(view, 0.8)  # found, silent, within the grace period
        assert texts() == []
        _serve_view(view, 2.0)  # (the stall check runs once a second)
        (silent,) = texts()
        assert "no sample since it was found" in silent

        pushing.set()  # a healthy stream: judged once a whole window came in, and clean
        _serve_view(view, 0.5)
        assert view.quality == []  # half a window: no verdict on any channel
        _serve_view(view, 2.0)
        assert [r["channel"] for r in view.quality] == ["A", "B", "C"]
        assert texts()[1:] == [f"EEG stream '{stream_name}' flowing again"], texts()

        flat.set()  # B goes flat: one alert, once its whole window is flat
        _serve_view(view, 0.6)
        assert len(texts()) == 2, texts()
        _serve_view(view, 1.8)
        assert texts()[2:] == ["channel went bad: B (flat)"], texts()
        flat.clear()  # and good again
        _serve_view(view, 1.5)
        assert texts()[3:] == ["channel good again: B"], texts()

        pushing.clear()  # the stream stops
        _serve_view(view, 2.5)
        assert texts()[4:] == [f"EEG stream '{stream_name}' stalled: no sample for 1 s"]
        assert [a["level"] for a in view.alerts] == [
            "error", "info", "warning", "info", "error",
        ]  # fmt: skip
    finally:
        stop.set()
        eeg.close()


@pytest.mark.timeout(30)
def test_a_page_that_falls_behind_gets_one_fresh_merged_update_not_a_backlog():
    from app.dashboard.server import PageFeed
    from app.dashboard.view import TRACE_POINTS

    def delta(k: int) -> dict:
        return {
            "kind": "delta",
            "eeg": {"t": [float(k)], "y": [[k], [-k]]},
            "rewards": [{"trial": k}],
            "markers": [{"event": "stimulus_onset", "trial": k}],
            "hist": {"epoch_latency_ms": [float(k)]} if k % 2 else {"dropped_frames": [0.0]},
            "loop": {"state": f"at {k}"},
            "t_events": [float(k)],
            "t_server": float(k),
        }

    feed = PageFeed()
    feed.offer(delta(0))
    assert feed.take()["rewards"] == [{"trial": 0}]
    for k in range(1, 401):  # 20 s of ticks while the page is busy with the first
        feed.offer(delta(k))
        assert feed.take() is None
    feed.acked()
    merged = feed.take()
    assert feed.take() is None  # one message for all of it
    assert [r["trial"] for r in merged["rewards"]] == list(range(1, 401))  # every event kept
    assert len(merged["markers"]) == len(merged["t_events"]) == 400
    assert len(merged["hist"]["epoch_latency_ms"]) == len(merged["hist"]["dropped_frames"]) == 200
    assert merged["loop"] == {"state": "at 400"}  # states: the newest
    assert merged["eeg"]["t"] == [float(k) for k in range(401 - TRACE_POINTS, 401)]
    assert merged["eeg"]["y"][1][-1] == -400  # the trace: only what the page still shows
    feed.acked()
    feed.offer(delta(401))  # the old stream's trace, then a new stream: its trace only
    feed.offer({"kind": "delta", "channels": ["A"], "sfreq": 250.0})
    assert "eeg" not in feed.pending
    feed.offer({"kind": "delta", "eeg": {"t": [1.0], "y": [[3]]}})
    fresh = feed.take()
    assert fresh["channels"] == ["A"]
    assert fresh["eeg"] == {"t": [1.0], "y": [[3]]}


@pytest.mark.timeout(60)
def test_the_gp_panel_carries_the_refits_posterior_summary(tmp_path):
    from app.dashboard.view import View
    from workers.session_store import SessionStore

    store = SessionStore(tmp_path / "s").open(role="session")
    view = View(tmp_path / "s", live=False)
    store.log("image_batch", round=3, n_images=8, best_by_round=[0.1, 0.4], timing_ms={})
    store.log(
        "gp_refit", iters=10, ms=42.0, n_points=64, outputscale=1.2, noise=0.4,
        signal_to_noise=3.0, lengthscale_median=2.5,
    )  # fmt: skip
    store.close()
    delta = view.tick()
    gp = delta["gp"]
    assert gp["round"] == 3
    assert gp["n_points"] == 64
    assert gp["signal_to_noise"] == 3.0
    assert gp["lengthscale_median"] == 2.5
    assert gp["refit_ms"] == 42.0


@pytest.mark.timeout(60)
def test_a_dashboard_started_by_hand_finds_the_presentations_controls(tmp_path):
    import zmq

    from app.dashboard.server import Controller
    from workers.session_store import SessionStore

    ctx = zmq.Context.instance()
    pulls = []
    try:
        for _ in range(2):  # a presentation, then the one a resume starts
            pull = ctx.socket(zmq.PULL)
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            pulls.append((pull, f"tcp://127.0.0.1:{port}"))
        store = SessionStore(tmp_path / "s").open(role="session")
        controller = Controller(None, session=tmp_path / "s")
        assert not controller.send("pause")  # no presentation yet: nothing to send to
        store.log("presentation_ready", control=pulls[0][1])
        assert controller.send("pause")
        assert pulls[0][0].poll(5000)
        assert json.loads(pulls[0][0].recv()) == {"command": "pause"}
        store.log("presentation_ready", control=pulls[1][1])
        assert controller.send("resume")
        assert pulls[1][0].poll(5000)
        assert json.loads(pulls[1][0].recv()) == {"command": "resume"}
        assert not pulls[0][0].poll(200)
        store.close()
        controller.close()
    finally:
        for pull, _ in pulls:
            pull.close(0)
