"""Self-report in the loop: the rating screen, a response box on LSL, and where ratings go.

End to end under Xvfb (as tests/test_presentation.py runs the presentation): the brain
model answers the rating screen through its response-box stream, `eegs present` stores
the ratings and sends them as markers, `eegs acquire` forwards them as RatingMessages
beside the epochs and records them, and `eegs export-bids` writes them as events.tsv
columns. Also: a response box alone (the test's own LSL outlet), the acquisition's
handling of malformed ratings, and the dataset, summary and report of rated trials.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pylsl
import pytest
import zmq
from conftest import run_eegs
from helpers import MarkerReader, events_named, wait_for_event
from PIL import Image

from app.presentation.display import read_display_number
from app.presentation.responses import parse_press
from experiment_protocols import load_protocol
from workers.messages import EpochMessage, RatingMessage, decode

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb"),
]

PROTOCOL = """
[streams]
eeg = "{name}-eeg"
markers = "{name}-markers"
connect_timeout_s = 15.0
[epochs]
event = "stimulus_onset"
tmin = -0.1
tmax = 0.5
baseline = [-0.1, 0.0]
[preprocessing]
notch_hz = [50.0]
l_freq = 0.5
h_freq = 40.0
resample_hz = 250.0
[brain_model]
sfreq = 250.0
subject_seed = 3
noise_seed = 5
[network]
epochs_endpoint = "tcp://127.0.0.1:{port}"
[recording]
enabled = {record}
[presentation]
wait_for_key = false
text_min_s = 0.1
rest_every_n_trials = 0
response_stream = "{name}-responses"
[presentation.timing]
fixation_s = 0.15
fixation_jitter_s = 0.0
stimulus_s = 0.2
stimulus_jitter_s = 0.0
iti_s = 0.15
iti_jitter_s = 0.0
[presentation.screen]
size_px = [640, 480]
pace_frames = true
check_refresh = false
dropped_frame_margin_ms = 8.0
[presentation.ratings]
enabled = true
blocks = ["calibration"]
timeout_s = {timeout}
[[presentation.blocks]]
kind = "calibration"
n_trials = {n_rated}
[[presentation.blocks]]
kind = "validation"
n_trials = 1
"""


# -- fixtures and helpers (the pattern of tests/test_presentation.py) --------------------
@pytest.fixture
def xvfb(processes) -> str:
    """A private X server; its DISPLAY string."""
    read_fd, write_fd = os.pipe()
    processes.start(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=None,
        stderr=None,
    )
    os.close(write_fd)
    try:
        number = read_display_number(read_fd, 15)
    finally:
        os.close(read_fd)
    assert number.isdigit(), "Xvfb did not start"
    return f":{number}"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two labelled classes: bright colourful and dark grey images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, lo, hi in (("amusement", 150, 255), ("sadness", 0, 90)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(lo, hi, (96, 96, 3), dtype=np.uint8)
            if label == "sadness":
                pixels[..., 1:] = pixels[..., :1]
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _protocol(tmp_path, name, *, port=1, record=False, timeout=8.0, n_rated=3) -> Path:
    path = tmp_path / "protocol.toml"
    text = PROTOCOL.format(
        name=name, port=port, record=str(record).lower(), timeout=timeout, n_rated=n_rated
    )
    path.write_text(text)
    return path


def _present(processes, xvfb, protocol, session, images, *extra):
    return processes.eegs(
        "present",
        "--protocol",
        str(protocol),
        "--session",
        str(session),
        "--windowed",
        "--images",
        str(images),
        *extra,
        env={**os.environ, "DISPLAY": xvfb},
    )


def _finish(proc, timeout=90.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out


def _stop(proc, timeout=30.0) -> None:
    """SIGTERM one process by pid and wait for its clean exit."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout)


def _drain(sub: zmq.Socket) -> list:
    out = []
    while sub.poll(200):
        out.append(decode(sub.recv_multipart())[0])
    return out


def _answers(marker: dict) -> tuple:
    return marker["trial"], marker.get("valence"), marker.get("arousal")


# -- tests -------------------------------------------------------------------------------
def test_brain_model_rates_through_the_response_box_and_ratings_reach_acquire_and_bids(
    processes, xvfb, tmp_path, stream_name, free_port, image_folder
):
    protocol = _protocol(tmp_path, stream_name, port=free_port, record=True)
    session = tmp_path / "session"
    logs = tmp_path / "logs"
    logs.mkdir()
    brain = processes.eegs(
        "brain-model",
        "--protocol",
        str(protocol),
        stdout=(logs / "brain.out").open("w"),
        stderr=(logs / "brain.log").open("w"),
    )
    acquire = processes.eegs(
        "acquire",
        "--protocol",
        str(protocol),
        "--session",
        str(session),
        stdout=(logs / "acquire.out").open("w"),
        stderr=(logs / "acquire.log").open("w"),
    )
    wait_for_event(session, "acquisition_ready", 60, proc=acquire)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{free_port}")
    try:
        present = _present(
            processes, xvfb, protocol, session, image_folder, "--wait-recording", "30"
        )
        reader = MarkerReader(f"{stream_name}-markers")
        out = _finish(present)
        assert "presentation completed: 4 trials" in out
        reader.wait_for("block_end", 2)
        time.sleep(1.0)  # the last epoch's window closes; the acquisition publishes it
        reader.close()
        messages = _drain(sub)
    finally:
        sub.close()
    _stop(acquire)
    assert brain.poll() is None, (logs / "brain.log").read_text()[-3000:]
    _stop(brain)

    # a question per scale, on its own flip, for the calibration trials only
    onsets = reader.events("rating_onset")
    assert [(m["trial"], m["scale"]) for m in onsets] == [
        (t, s) for t in range(3) for s in ("valence", "arousal")
    ]
    assert all((m["block"], m["low"], m["high"]) == ("calibration", 1, 9) for m in onsets)
    ratings = reader.events("rating")
    assert [m["trial"] for m in ratings] == [0, 1, 2]  # the validation trial is not rated
    for m in ratings:
        assert m["input"] == {"valence": "response_box", "arousal": "response_box"}
        assert 1 <= m["valence"] <= 9
        assert 1 <= m["arousal"] <= 9
        # the brain model presses after its response delay (never under 0.25 s)
        assert all(250 <= ms < 8000 for ms in m["rt_ms"].values()), m
    # they are the brain model's answers: its log names each press
    brain_log = (logs / "brain.log").read_text()
    for m in ratings:
        for scale in ("valence", "arousal"):
            assert f"trial {m['trial']}: {scale} {m[scale]}, pressed" in brain_log

    # stored per trial in events.jsonl
    trials = events_named(session, "trial")
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    by_marker = {m["trial"]: m for m in ratings}
    for t in trials[:3]:
        assert (t["rating"]["valence"], t["rating"]["arousal"]) == (
            by_marker[t["trial"]]["valence"],
            by_marker[t["trial"]]["arousal"],
        )
    assert trials[3]["block"] == "validation"
    assert trials[3]["rating"] is None
    assert not events_named(session, "rating_invalid")

    # the acquisition forwarded each rating beside the epochs
    rated = [m for m in messages if isinstance(m, RatingMessage)]
    assert [(r.trial_id, r.valence, r.arousal) for r in rated] == [
        (m["trial"], float(m["valence"]), float(m["arousal"])) for m in ratings
    ]
    assert all(r.block == "calibration" and r.scale == (1.0, 9.0) for r in rated)
    assert all(r.session == session.name and set(r.rt_ms) == {"valence", "arousal"} for r in rated)
    assert len([m for m in messages if isinstance(m, EpochMessage)]) == 4
    info = json.loads((session / "session.json").read_text())
    assert info["acquisition"]["n_ratings"] == 3

    # the recording's rating markers become events.tsv columns
    res = run_eegs("export-bids", str(session), str(tmp_path / "bids"), "--subject", "R1")
    assert res.returncode == 0, res.stderr[-3000:]
    (tsv,) = (tmp_path / "bids").rglob("*_events.tsv")
    rows = list(csv.DictReader(io.StringIO(tsv.read_text()), delimiter="\t"))
    bids_ratings = [r for r in rows if r["trial_type"] == "rating"]
    assert [(int(r["trial"]), int(r["valence"]), int(r["arousal"])) for r in bids_ratings] == [
        _answers(m) for m in ratings
    ]
    questions = [r for r in rows if r["trial_type"] == "rating_onset"]
    assert [r["scale"] for r in questions] == ["valence", "arousal"] * 3
    onset_rows = [r for r in rows if r["trial_type"] == "stimulus_onset"]
    assert [r["valence"] for r in onset_rows] == ["n/a"] * 4
    assert {r["label"] for r in onset_rows} == {"amusement", "sadness"}
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    assert "participant's valence rating" in sidecar["valence"]["Description"]


def test_response_box_of_the_lab_answers_only_the_rating_screen(
    processes, xvfb, tmp_path, stream_name, image_folder
):
    """No brain model: the test is the response box, pushing on its own LSL outlet."""
    protocol = _protocol(tmp_path, stream_name, n_rated=2, timeout=10.0)
    session = tmp_path / "session"
    info = pylsl.StreamInfo(
        f"{stream_name}-responses", "Markers", 1, 0, pylsl.cf_string, f"{stream_name}-box"
    )
    box = pylsl.StreamOutlet(info)
    present = _present(processes, xvfb, protocol, session, image_folder)
    reader = MarkerReader(f"{stream_name}-markers")
    try:
        wait_for_event(session, "response_stream_connected", 30, proc=present)
        reader.wait_for("stimulus_onset", 1)
        box.push_sample(["5"])  # during the stimulus: not an answer to anything
        reader.wait_for("rating_onset", 1)
        time.sleep(0.1)
        box.push_sample(["{not json"])  # malformed: logged, ignored
        box.push_sample(['{"key": "0"}'])  # not a point of the 1-9 scale
        box.push_sample(['{"key": "8", "device": "box-1"}'])
        reader.wait_for("rating_onset", 2)
        time.sleep(0.1)
        box.push_sample(["2"])  # a bare key name
        reader.wait_for("rating_onset", 3)
        time.sleep(0.1)
        box.push_sample(['{"key": 3}'])  # an integer key
        reader.wait_for("rating_onset", 4)
        time.sleep(0.1)
        box.push_sample(["9"])
        _finish(present)
    finally:
        reader.close()
    ratings = reader.events("rating")
    assert [_answers(m) for m in ratings] == [(0, 8, 2), (1, 3, 9)]
    assert all(
        m["input"] == {"valence": "response_box", "arousal": "response_box"} for m in ratings
    )
    trials = events_named(session, "trial")
    assert [t["rating"]["valence"] for t in trials[:2]] == [8, 3]
    assert trials[2]["rating"] is None  # validation: not rated
    ignored = events_named(session, "response_ignored")
    reasons = {e["key"]: e["reason"] for e in ignored}
    # dropped as the question appears, or (arriving later) by its timestamp
    assert reasons["5"] in ("no question", "pressed before the question appeared")
    assert reasons["0"] == "not a point of the 1-9 scale"
    assert len(ignored) == 2
    invalid = events_named(session, "response_invalid")
    assert [e["text"] for e in invalid] == ["{not json"]
    summary = json.loads((session / "session.json").read_text())["presentation"]
    assert summary["response_box"]["received"] == 7
    assert summary["response_box"]["invalid"] == 1


def test_response_box_sample_formats():
    assert parse_press('{"key": "7"}') == "7"
    assert parse_press('{"key": 4, "t": 1.5}') == "4"
    assert parse_press(" 6 ") == "6"
    assert parse_press('"space"') == "space"
    for bad in ("", "  ", "{}", '{"key": true}', '{"key": ""}', "{oops", '""'):
        with pytest.raises(ValueError):
            parse_press(bad)


def test_acquisition_forwards_ratings_and_skips_malformed_ones(tmp_path, free_port):
    """Rating markers through the acquisition's marker path: published, or skipped with a log."""
    from workers import transport
    from workers.acquisition import Acquisition
    from workers.session_store import SessionStore

    class Inlet:  # a marker inlet that already holds these samples
        def __init__(self, texts):
            self.texts = texts

        def pull_chunk(self, timeout=0.0):
            texts, self.texts = self.texts, []
            return [[t] for t in texts], [100.0 + i for i in range(len(texts))]

    protocol = load_protocol()
    store = SessionStore(tmp_path / "s").open(role="acquisition", protocol=protocol)
    ctx = zmq.Context.instance()
    endpoint = f"tcp://127.0.0.1:{free_port}"
    pub, _ = transport.bind(ctx, zmq.PUB, endpoint)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    time.sleep(0.3)  # PUB/SUB: the subscription reaches the publisher
    good = {"event": "rating", "trial": 4, "block": "calibration", "valence": 7, "arousal": 2}
    good |= {"rt_ms": {"valence": 812.5, "arousal": 640.0}, "low": 1, "high": 9}
    texts = [
        json.dumps(good),
        '{"event": "rating", "trial": 5, "valence": NaN, "arousal": 3}',
        '{"event": "rating", "trial": 6, "valence": Infinity}',
        '{"event": "rating", "trial": 7, "valence": "7", "arousal": 12}',
        '{"event": "rating", "trial": true, "valence": 5}',
        '{"event": "rating", "valence": 5}',
        '{"event": "rating", "trial": 8, "valence": 1e999, "arousal": 1, "rt_ms": [1]}',
        '{"event": "rating", "trial": 9, "valence": 100000000000000000000000000000000000000'
        + "0" * 400
        + "}",
    ]
    try:
        acq = Acquisition(protocol, store, pub)
        acq.markers = Inlet(texts)
        acq._poll_markers()  # must not raise
        got = _drain(sub)
    finally:
        sub.close()
        pub.close(0)
        store.close("completed")
    assert all(isinstance(m, RatingMessage) for m in got)
    assert [(m.trial_id, m.valence, m.arousal) for m in got] == [
        (4, 7.0, 2.0),
        (5, None, 3.0),  # the NaN valence is dropped, the arousal kept
        (8, None, 1.0),
    ]
    assert got[0].rt_ms == {"valence": 812.5, "arousal": 640.0}
    assert got[0].scale == (1.0, 9.0)
    assert got[0].block == "calibration"
    assert acq.n_ratings == 3
    invalid = events_named(tmp_path / "s", "rating_invalid")
    # NaN, Infinity and 1e999 read as null (no answer); the 440-digit number refuses its
    # whole marker (the bounded parser: no integer beyond int64)
    assert [e["forwarded"] for e in invalid] == [False, False, False, False]
    assert [e["trial_id"] for e in invalid] == [6, 7, None, None]
    (refused,) = events_named(tmp_path / "s", "marker_invalid")
    assert "out of range" in refused["reason"]
    # every other marker is logged, a non-finite number as null with its field named
    logged = events_named(tmp_path / "s", "marker")
    assert len(logged) == len(texts) - 1
    assert logged[1]["marker"]["valence"] is None
    assert logged[1]["nulled"] == ["valence"]
    assert logged[6]["nulled"] == ["valence"]


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)
    return path


def test_ratings_reach_dataset_metadata_summary_and_report(tmp_path):
    """A session directory with rated trials: dataset metadata, summary.json, report.html."""
    from app.session_outputs import write_outputs
    from workers.session_store import SessionStore

    protocol = load_protocol()
    session = tmp_path / "session"
    store = SessionStore(session).open(role="presentation", protocol=protocol)
    trial = 0

    def show(block, round_, image, label, rating):
        nonlocal trial
        store.log(
            "trial",
            trial=trial,
            block=block,
            round=round_,
            image=str(image),
            label=label,
            rating=rating,
            dropped_frames=0,
        )
        trial += 1
        return trial - 1

    def answer(v, a):
        return {"valence": v, "arousal": a, "rt_ms": {"valence": 900.0, "arousal": 700.0}}

    for i, (label, v) in enumerate([("amusement", 8), ("amusement", 7), ("sadness", 2)] * 2):
        image = _png(tmp_path / "stimuli" / label / f"{i}.png", 200 if v > 5 else 30)
        show("calibration", 0, image, label, answer(v, 5))
    show("calibration", 0, tmp_path / "stimuli" / "sadness" / "2.png", "sadness", None)
    for r in range(2):
        for k in range(3):
            image = _png(session / "images" / f"round-0{r}" / f"img-{r}-{k}.png", 60 * k)
            rating = answer(k + 3, 4) if (r, k) == (1, 2) else None
            tid = show("closed_loop", r, image, None, rating)
            proba = {"sadness": 0.4 - 0.1 * k, "amusement": 0.6 + 0.1 * k}
            store.log("reward", trial_id=tid, reward=proba["amusement"], details={"proba": proba})
            store.log("epoch", trial_id=tid, bad=False, latency_ms=5.0)
    store.close("completed")

    summary = write_outputs(session, protocol, pilot=False)

    lines = [
        json.loads(x) for x in (session / "dataset" / "metadata.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 6
    for line in lines:
        assert line["decoder_probabilities"]["amusement"] == pytest.approx(line["reward"])
    rated = [x for x in lines if x["valence_rating"] is not None]
    assert [(x["trial"], x["valence_rating"], x["arousal_rating"]) for x in rated] == [
        (12, 5.0, 4.0)
    ]
    assert sum(x["arousal_rating"] is None for x in lines) == 5

    ratings = summary["ratings"]
    assert ratings["n_rated"] == 7
    assert ratings["scale"] == [1, 9]
    cal = ratings["by_block"]["calibration"]
    assert cal["n"] == 6
    assert cal["valence_mean_by_label"] == {"amusement": 7.5, "sadness": 2.0}
    assert ratings["by_block"]["closed_loop"]["valence_mean"] == 5.0
    assert json.loads((session / "summary.json").read_text())["ratings"] == ratings
    html = (session / "report.html").read_text()
    assert "Self-report" in html
    assert "Ratings of the rated blocks" in html
    assert math.isclose(cal["arousal_mean"], 5.0)
