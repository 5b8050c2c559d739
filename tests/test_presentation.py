"""`eegs present` as a real process: a PsychoPy window on Xvfb, markers read back over LSL.

Each test starts its own Xvfb (killed by the `processes` finalizer) and runs the
presentation against it with software frame pacing (Xvfb has no vsync). Keys are
typed through the X server's XTEST extension, as a keyboard would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import run_eegs
from helpers import MarkerReader
from PIL import Image

from app.presentation.display import read_display_number
from app.presentation.frames import load_frames
from workers.messages import ImageInfo, ImageRequest, decode, encode_image_batch
from workers.session_store import read_events

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb")

FAST = """
[streams]
markers = "{markers}"
connect_timeout_s = 10.0
[presentation]
wait_for_key = false
text_min_s = 0.1
rest_every_n_trials = {rest}
late_image_policy = "{policy}"
pool_folder = "{pool}"
late_image_timeout_s = 20.0
[presentation.timing]
fixation_s = 0.15
fixation_jitter_s = 0.05
stimulus_s = 0.2
stimulus_jitter_s = 0.0
iti_s = 0.15
iti_jitter_s = 0.0
[presentation.screen]
size_px = [640, 480]
pace_frames = true
check_refresh = false
dropped_frame_margin_ms = 8.0
[presentation.photodiode]
enabled = true
[presentation.ratings]
enabled = {ratings}
timeout_s = {rating_timeout}
[generation]
endpoint = "tcp://127.0.0.1:{port}"
"""


# -- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture
def xvfb(processes) -> str:
    """A private X server; its DISPLAY string."""
    read_fd, write_fd = os.pipe()
    processes.start(
        [
            "Xvfb",
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            "640x480x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_fd,),
        stdout=None,
        stderr=None,
    )
    os.close(write_fd)
    try:
        number = read_display_number(read_fd, 15)  # Xvfb dies if the pipe closes before its newline
    finally:
        os.close(read_fd)
    assert number.isdigit(), "Xvfb did not start"
    return f":{number}"


def _png(rng: np.random.Generator, size: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two labelled classes of small images and one broken file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label in ("amusement", "sadness"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(_png(rng))
    (root / "sadness" / "broken.png").write_bytes(b"this is not a PNG file")
    return root


def _protocol(
    tmp_path,
    stream_name,
    *,
    blocks,
    policy="wait",
    pool="",
    ratings=False,
    rating_timeout=0.0,
    rest=0,
    port=1,
) -> Path:
    text = FAST.format(
        markers=stream_name,
        policy=policy,
        pool=pool,
        ratings=str(ratings).lower(),
        rating_timeout=rating_timeout,
        rest=rest,
        port=port,
    )
    path = tmp_path / "protocol.toml"
    path.write_text(text + blocks)
    return path


def _present(processes, xvfb, protocol, session, *extra):
    env = {**os.environ, "DISPLAY": xvfb}
    return processes.eegs(
        "present",
        "--protocol",
        str(protocol),
        "--session",
        str(session),
        "--windowed",
        *extra,
        env=env,
    )


def _finish(proc, timeout=90.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out


@contextlib.contextmanager
def _generator(port: int, answer: Callable[[ImageRequest], list]) -> Iterator[list[ImageRequest]]:
    """A REP socket where the worker would be, answering each request with ``answer(req)``.

    Yields the requests as they come; the thread stops and joins on leaving.
    """
    requests: list[ImageRequest] = []
    stop = threading.Event()

    def serve() -> None:
        sock = zmq.Context.instance().socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://127.0.0.1:{port}")
        while not stop.is_set():
            if not sock.poll(50):
                continue
            req, _ = decode(sock.recv_multipart())
            requests.append(req)
            sock.send_multipart(encode_image_batch(req.session, req.round, answer(req)))
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        stop.set()
        thread.join(2)


def _events(session: Path, name: str) -> list[dict]:
    return [e for e in read_events(session / "events.jsonl") if e["event"] == name]


def _assert_markers_on_flips(reader: MarkerReader, session: Path) -> int:
    """Every marker received over LSL is stamped within 1 ms of its recorded flip."""
    sent = _events(session, "marker_sent")
    flips = load_frames(session)["flip_lsl"]
    assert len(sent) == len(reader.markers), "every marker logged was received, and no other"
    for (marker, ts), log in zip(reader.markers, sent, strict=True):
        assert marker == log["marker"]
        flip = flips[log["frame"]]
        assert log["t_flip_lsl"] == pytest.approx(flip)
        assert abs(ts - flip) <= 1e-3, f"{marker['event']}: {(ts - flip) * 1e3:.3f} ms"
        assert log["push_delay_ms"] >= 0.0
    return len(sent)


_XTEST = ctypes.util.find_library("Xtst")


def _press(display: str, *keys: str) -> None:
    """Type keys on an X display through XTEST (as a real keyboard would)."""
    x11 = ctypes.CDLL(ctypes.util.find_library("X11"))
    xtst = ctypes.CDLL(_XTEST)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XStringToKeysym.restype = ctypes.c_ulong
    x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(display.encode())
    assert dpy, f"cannot open display {display}"
    try:
        for key in keys:
            code = x11.XKeysymToKeycode(dpy, x11.XStringToKeysym(key.encode()))
            assert code, f"no keycode for {key}"
            xtst.XTestFakeKeyEvent(dpy, code, 1, 0)
            xtst.XTestFakeKeyEvent(dpy, code, 0, 0)
            x11.XFlush(dpy)
            time.sleep(0.05)
    finally:
        x11.XCloseDisplay(dpy)


# -- tests -------------------------------------------------------------------------------
def test_short_protocol_end_to_end_markers_on_flips(
    processes, xvfb, tmp_path, stream_name, image_folder
):
    blocks = """
[[presentation.blocks]]
kind = "calibration"
n_trials = 6
[[presentation.blocks]]
kind = "validation"
n_trials = 2
n_rounds = 2
"""
    protocol = _protocol(tmp_path, stream_name, blocks=blocks, rest=4)
    session = tmp_path / "session"
    proc = _present(processes, xvfb, protocol, session, "--images", str(image_folder))
    reader = MarkerReader(stream_name)
    out = _finish(proc)
    time.sleep(0.3)
    reader.close()
    assert "presentation completed: 10 trials" in out

    n = _assert_markers_on_flips(reader, session)
    assert n == 10 * 3 + 2 * 2 + 2 * 2 + 2  # trials, blocks, rests, instructions
    names = [m["event"] for m, _ in reader.markers]
    assert names.count("stimulus_onset") == names.count("stimulus_offset") == 10
    assert names.count("block_start") == names.count("block_end") == 2
    assert names.count("rest_start") == 2  # after trials 4 and 8
    onsets = reader.events("stimulus_onset")
    assert [m["trial"] for m in onsets] == list(range(10))
    assert [m["block"] for m in onsets] == ["calibration"] * 6 + ["validation"] * 4
    assert [m["round"] for m in onsets] == [0] * 6 + [0, 0, 1, 1]
    for m in onsets:
        path = Path(m["image"])
        assert path.is_absolute()
        assert path.name != "broken.png"
        assert m["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert m["label"] == path.parent.name
    # calibration draws the labels in turn
    assert sorted(m["label"] for m in onsets[:6]) == ["amusement"] * 3 + ["sadness"] * 3

    trials = _events(session, "trial")
    assert [t["trial"] for t in trials] == list(range(10))
    for t in trials:
        assert t["stimulus_frames_planned"] == 12
        # Xvfb on a shared machine stalls now and then: check consistency, not speed
        shown_ms = (t["t_offset_lsl"] - t["t_onset_lsl"]) * 1e3
        assert t["stimulus_ms"] == pytest.approx(shown_ms, abs=1e-3)
        assert t["stimulus_ms"] > 200 - 1000 / 60
        assert t["stimulus_frames"] == round(shown_ms * 60 / 1000)
        intervals = np.asarray(t["frame_intervals_ms"])
        assert intervals.size > 20
        assert t["dropped_frames"] == int((intervals > 1000 / 60 + 8.0).sum())
    frames = load_frames(session)
    assert frames["flip_lsl"].size > 200
    assert np.all(np.diff(frames["flip_lsl"]) > 0)
    assert "stimulus" in frames["phase_names"]
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "completed"
    assert info["presentation"]["n_trials"] == 10


def test_broken_image_is_logged_and_replaced_from_the_folder(
    processes, xvfb, tmp_path, stream_name
):
    rng = np.random.default_rng(1)
    folder = tmp_path / "few"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(rng))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    blocks = '[[presentation.blocks]]\nkind = "calibration"\nn_trials = 3\n'
    protocol = _protocol(tmp_path, stream_name, blocks=blocks)
    session = tmp_path / "session"
    proc = _present(processes, xvfb, protocol, session, "--images", str(folder))
    reader = MarkerReader(stream_name)
    _finish(proc)
    reader.close()
    failed = _events(session, "image_failed")
    assert failed
    assert all(Path(f["image"]).name == "b.png" for f in failed)
    assert "not a readable image" in failed[0]["reason"]
    assert len(_events(session, "image_replaced")) == len(failed)
    shown = [Path(m["image"]).name for m in reader.events("stimulus_onset")]
    assert shown == ["a.png"] * 3


def test_generator_images_over_zeromq_with_pool_stand_ins(
    processes, xvfb, tmp_path, stream_name, free_port
):
    """Round 0 comes at once with one broken image; round 1 comes late: pool images fill in."""
    rng = np.random.default_rng(2)
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "p0.png").write_bytes(_png(rng))

    def answer(req: ImageRequest) -> list:
        if req.round == 1:
            time.sleep(1.0)  # generation takes a while: the pool fills in
        images = [
            (
                ImageInfo(image_id=f"r{req.round}-{i}", label="amusement", provenance={"seed": i}),
                _png(rng, 256),
            )
            for i in range(req.n_images)
        ]
        if req.round == 0:
            images[1] = (ImageInfo(image_id="r0-broken"), b"garbage")
        return images

    blocks = '[[presentation.blocks]]\nkind = "closed_loop"\nn_trials = 3\nn_rounds = 2\n'
    blocks += 'source = "generator"\n'
    protocol = _protocol(
        tmp_path, stream_name, blocks=blocks, policy="pool", pool=str(pool), port=free_port
    )
    session = tmp_path / "session"
    with _generator(free_port, answer) as requests:
        proc = _present(processes, xvfb, protocol, session)
        reader = MarkerReader(stream_name)
        try:
            _finish(proc)
        finally:
            reader.close()
    assert [(r.round, r.n_images) for r in requests] == [(0, 3), (1, 3)]
    onsets = reader.events("stimulus_onset")
    assert requests[1].trials == [m["trial"] for m in onsets if m["round"] == 0]
    real = [Path(m["image"]) for m in onsets if "stand_in" not in m]
    assert sorted(p.name for p in real) == [
        "r0-0.png",
        "r0-2.png",
        "r1-0.png",
        "r1-1.png",
        "r1-2.png",
    ]
    for p in real:
        assert p.parent == session.resolve() / "images" / f"round-0{p.name[1]}"
        assert json.loads(p.with_suffix(".json").read_text())["provenance"]["seed"] in (0, 1, 2)
    stand_ins = [m for m in onsets if "stand_in" in m]
    assert {m["stand_in"] for m in stand_ins} == {"failed", "late"}
    assert all(Path(m["image"]).name == "p0.png" for m in stand_ins)
    assert [f["image"].endswith("r0-broken.png") for f in _events(session, "image_failed")] == [
        True
    ]
    _assert_markers_on_flips(reader, session)


def test_generated_images_are_shown_presentations_times_in_passes(
    processes, xvfb, tmp_path, stream_name, free_port
):
    """presentations = 2: each image of a round twice, never twice in a row; one request."""
    rng = np.random.default_rng(4)

    def answer(req: ImageRequest) -> list:
        return [
            (ImageInfo(image_id=f"r{req.round}-{i}"), _png(rng, 64)) for i in range(req.n_images)
        ]

    blocks = '[[presentation.blocks]]\nkind = "closed_loop"\nn_trials = 3\nn_rounds = 2\n'
    blocks += 'source = "generator"\npresentations = 2\n'
    protocol = _protocol(tmp_path, stream_name, blocks=blocks, port=free_port)
    session = tmp_path / "session"
    with _generator(free_port, answer) as requests:
        proc = _present(processes, xvfb, protocol, session)
        reader = MarkerReader(stream_name)
        try:
            out = _finish(proc)
        finally:
            reader.close()
    assert "presentation completed: 12 trials" in out
    assert [(r.round, r.n_images) for r in requests] == [(0, 3), (1, 3)]
    onsets = reader.events("stimulus_onset")
    assert requests[1].trials == [m["trial"] for m in onsets if m["round"] == 0]
    for r in range(2):
        names = [Path(m["image"]).name for m in onsets if m["round"] == r]
        assert sorted(names) == sorted([f"r{r}-{i}.png" for i in range(3)] * 2)
        assert all(a != b for a, b in zip(names, names[1:], strict=False))
    # stored once each, whatever the presentations
    assert len(list((session / "images" / "round-00").glob("*.png"))) == 3
    (start,) = reader.events("block_start")
    assert (start["n_trials"], start["presentations"]) == (3, 2)
    _assert_markers_on_flips(reader, session)


def test_sigterm_mid_run_leaves_a_readable_aborted_session(
    processes, xvfb, tmp_path, stream_name, image_folder
):
    blocks = '[[presentation.blocks]]\nkind = "calibration"\nn_trials = 200\n'
    protocol = _protocol(tmp_path, stream_name, blocks=blocks)
    session = tmp_path / "session"
    proc = _present(processes, xvfb, protocol, session, "--images", str(image_folder))
    reader = MarkerReader(stream_name)
    reader.wait_for("stimulus_onset", 3)
    proc.send_signal(signal.SIGTERM)
    _finish(proc, timeout=30)
    reader.close()
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "aborted"
    abort = reader.events("abort")
    assert len(abort) == 1
    assert abort[0]["reason"] == "stop signal"
    trials = _events(session, "trial")  # every completed trial, intact
    assert 2 <= len(trials) < 200
    assert abort[0]["trial"] == len(trials)  # the trial cut short is named
    assert abort[0]["phase"] in ("fixation", "stimulus", "offset", "iti")
    assert _events(session, "abort")[0]["reason"] == "stop signal"
    assert load_frames(session)["flip_lsl"].size > 0
    _assert_markers_on_flips(reader, session)


@pytest.mark.skipif(_XTEST is None, reason="needs libXtst to type keys")
def test_keys_rate_pause_resume_and_abort(processes, xvfb, tmp_path, stream_name, image_folder):
    blocks = '[[presentation.blocks]]\nkind = "calibration"\nn_trials = 100\n'
    protocol = _protocol(tmp_path, stream_name, blocks=blocks, ratings=True, rating_timeout=20.0)
    session = tmp_path / "session"
    proc = _present(processes, xvfb, protocol, session, "--images", str(image_folder))
    reader = MarkerReader(stream_name)
    reader.wait_for("stimulus_offset", 1)
    time.sleep(0.2)
    _press(xvfb, "7")
    time.sleep(0.3)
    _press(xvfb, "3")
    rating = reader.wait_for("rating", 1)
    assert (rating["trial"], rating["valence"], rating["arousal"]) == (0, 7, 3)
    _press(xvfb, "p")  # takes effect once trial 0 (its ITI) is over
    pause = reader.wait_for("pause")
    assert pause["after_trial"] == 0
    time.sleep(0.5)
    assert len(reader.events("stimulus_onset")) == 1, "paused: no trial starts"
    _press(xvfb, "r")
    reader.wait_for("resume")
    reader.wait_for("stimulus_offset", 2)
    time.sleep(0.2)
    _press(xvfb, "5")
    time.sleep(0.3)
    _press(xvfb, "5")
    reader.wait_for("rating", 2)
    reader.wait_for("stimulus_onset", 3)
    _press(xvfb, "Escape")
    _finish(proc, timeout=30)
    reader.close()
    assert reader.events("abort")[0]["reason"] == "abort key"
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "aborted"
    trials = _events(session, "trial")
    assert trials[0]["rating"]["valence"] == 7
    assert trials[1]["rating"]["arousal"] == 5
    _assert_markers_on_flips(reader, session)


def test_impossible_timing_is_refused_before_any_window(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[presentation.timing]\nstimulus_s = 0.01\nstimulus_jitter_s = 0.0\n")
    result = run_eegs(
        "present",
        "--protocol",
        str(path),
        "--session",
        str(tmp_path / "s"),
        "--images",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "shorter than one frame (16.67 ms at screen.refresh_hz = 60)" in result.stderr
    assert not (tmp_path / "s").exists()
