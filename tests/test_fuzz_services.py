"""The long-running services under fuzzed input: each still answers, and nothing valid is lost.

Hypothesis (``EEGS_FUZZ_EXAMPLES=N`` for more examples) sends hostile markers to a
running ``eegs acquire`` (a real LSL outlet on loopback), hostile samples to a reading
``ResponseBox`` (a real LSL response stream) and hostile frames to a running
``eegs worker`` (real ZeroMQ sockets). Each example sends a valid item after its hostile
ones, and asserts that the service is alive and the valid item arrived: a stimulus's
epoch, a key press, an answered request. One service per module, started once.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid

import numpy as np
import pylsl
import pytest
from conftest import Processes
from helpers import events_named, wait_for_event, wait_until
from hostile import (
    field_values,
    fuzz_settings,
    fuzz_timeout,
    markers,
    mutated_texts,
    object_text,
    text,
)
from hypothesis import given
from hypothesis import strategies as st
from test_generation_worker import _epoch, _protocol

from workers.generation.client import GenerationClient
from workers.lsl_clock import make_marker_outlet
from workers.messages import (
    MAX_TRIAL_ID,
    SCHEMA_VERSION,
    ErrorReply,
    ImageRequest,
    Message,
    RewardReply,
    StatusReply,
    StatusRequest,
    array_spec,
    encode,
)

pytestmark = pytest.mark.timeout(fuzz_timeout(300))

_DEEP = "[" * 5000 + "]" * 5000
#: Markers a broken presentation or a stranger on the network sent in earlier probes.
HOSTILE_MARKERS: list[str] = [
    "",  # empty
    "\ufeff{}",  # a byte-order mark, then nothing useful
    "null",
    "[]",
    "42",
    '"stimulus_onset"',
    "NaN",
    '{"event": NaN}',
    '{"event": 1e999}',  # inf
    '{"event": ["stimulus_onset"]}',
    '{"event": null, "trial": 1}',
    '{"event": "stimulus_onset", "trial": NaN}',
    '{"event": "stimulus_onset", "trial": Infinity}',
    '{"event": "stimulus_onset", "trial": 1e308}',
    '{"event": "stimulus_onset", "trial": ' + "9" * 5000 + "}",  # a 5000-digit integer
    '{"event": "stimulus_onset", "trial": true}',
    '{"event": "stimulus_onset", "trial": {"nested": 1}}',
    '{"event": "stimulus_onset", "trial": "7; rm -rf /"}',
    '{"event": "stimulus_onset", "trial": 3, "image": "../../../../etc/shadow"}',
    '{"event": "stimulus_onset", "trial": 4, "image": "/dev/zero"}',
    '{"event": "stimulus_onset", "trial": 5, "image": "a\\u0000b.png"}',
    '{"event": "stimulus_onset", "trial": 6, "image": "\\ud800.png"}',  # lone surrogate
    '{"event": "stimulus_onset", "x": ' + _DEEP + "}",
    '{"event": "' + "e" * 70_000 + '"}',  # over the 64 KiB marker limit
    '{"event": "stimulus_onset", "trial": 8, "event": 9}',  # duplicate key, last wins
    "{" * 100_000,
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- eegs acquire: LSL markers -----------------------------------------------------------


class _Acquire:
    """A running brain model and ``eegs acquire`` reading one marker stream of ours."""

    def __init__(self, tmp, procs: Processes) -> None:
        name = f"fuzz-{uuid.uuid4().hex[:10]}"
        self.outlet = make_marker_outlet(f"{name}-markers")
        self.brain = procs.eegs(
            "brain-model", "--name", name, "--markers", f"{name}-markers", "--seed", "0",
            "--subject-seed", "0", "--sfreq", "250", "--channels", "atm17",
            "--image-root", str(tmp),
        )  # fmt: skip
        self.session = tmp / "session"
        self.proc = procs.eegs(
            "acquire", "--session", str(self.session), "--eeg", name,
            "--markers", f"{name}-markers", "--tmin", "-0.1", "--tmax", "0.2",
            "--endpoint", f"tcp://127.0.0.1:{_free_port()}", "--no-record",
        )  # fmt: skip
        wait_for_event(self.session, "markers_connected", timeout=90, proc=self.proc)
        assert self.outlet.wait_for_consumers(30)
        time.sleep(1.0)  # both inlets joined
        self.trials = itertools.count(1_000_000)
        # a first stimulus warms the brain model up (its first response is built lazily)
        self.wait_epoch(self.valid_trial(), 60)

    def marker(self, raw: str | dict) -> None:
        self.outlet.push_sample([raw if isinstance(raw, str) else json.dumps(raw)],
                                pylsl.local_clock())  # fmt: skip

    def epoch_ids(self) -> set[int]:
        return {e["trial_id"] for e in events_named(self.session, "epoch")}

    def valid_trial(self) -> int:
        """Send a valid stimulus marker; its epoch must come."""
        trial = next(self.trials)
        self.marker({"event": "stimulus_onset", "trial": trial})
        return trial

    def wait_epoch(self, trial: int, timeout: float = 30) -> None:
        """Until ``trial``'s epoch is stored; both processes must be alive throughout."""

        def done() -> bool:
            dead = [p for p in (self.brain, self.proc) if p.poll() is not None]
            assert not dead, dead[0].stderr.read()[-3000:]
            return trial in self.epoch_ids()

        wait_until(done, timeout)


@pytest.fixture(scope="module")
def acquire(tmp_path_factory):
    procs = Processes()
    try:
        yield _Acquire(tmp_path_factory.mktemp("acquire"), procs)
    finally:
        procs.stop_all()


def test_a_huge_trial_id_is_skipped_and_does_not_shift_the_numbering(acquire):
    """Regression: a huge ``trial`` killed ``eegs acquire`` at the epoch file, and moved
    the number of every later marker that has none."""
    first = acquire.valid_trial()
    for huge in (2**40, MAX_TRIAL_ID + 1, 10**30, float("nan")):
        acquire.marker('{"event": "stimulus_onset", "trial": ' + json.dumps(huge) + "}")
    acquire.marker({"event": "stimulus_onset"})  # no trial id: numbered after `first`
    acquire.wait_epoch(first + 1)
    skipped = [e["reason"] for e in events_named(acquire.session, "marker_invalid")]
    assert sum("trial" in r for r in skipped) >= 4
    assert max(acquire.epoch_ids()) == first + 1


def test_a_corpus_of_hostile_markers_is_refused_with_reasons(acquire):
    """Markers nobody generates at random: each refused with a reason, or read safely."""
    n_before = len(events_named(acquire.session, "marker_invalid"))
    for raw in HOSTILE_MARKERS:
        acquire.marker(raw)
        time.sleep(0.01)
    acquire.wait_epoch(acquire.valid_trial())
    skipped = events_named(acquire.session, "marker_invalid")[n_before:]
    assert len(skipped) >= 18  # not an object with a string event, or a bad trial id
    assert all(e.get("reason") for e in skipped)
    ids = [e["trial_id"] for e in events_named(acquire.session, "epoch")]
    assert all(isinstance(t, int) and 0 <= t <= MAX_TRIAL_ID for t in ids), ids
    assert not events_named(acquire.session, "trial_id_repeated")
    # odd image paths are the readers' to refuse: the markers are read; 6's image holds a
    # lone surrogate (no valid text), so it is refused whole, like any such input
    read = [e["marker"].get("trial") for e in events_named(acquire.session, "marker")]
    assert all(t in read for t in (3, 4, 5))
    assert 6 not in read


@fuzz_settings(12)
@given(st.lists(markers(), min_size=1, max_size=6))
def test_acquire_survives_hostile_markers_and_epochs_every_valid_one(acquire, hostile):
    for raw in hostile:
        acquire.marker(raw.encode(errors="replace").decode())  # LSL carries UTF-8
    acquire.wait_epoch(acquire.valid_trial())


# -- the response box: LSL samples -------------------------------------------------------


@pytest.fixture(scope="module")
def response_box():
    from app.presentation.responses import ResponseBox

    name = f"fuzz-box-{uuid.uuid4().hex[:10]}"
    info = pylsl.StreamInfo(name, "Markers", 1, 0, pylsl.cf_string, name)
    outlet = pylsl.StreamOutlet(info)
    logged: list[tuple[str, dict]] = []
    box = ResponseBox(name, log=lambda event, **fields: logged.append((event, fields)))
    try:
        assert box.connected.wait(30)
        assert outlet.wait_for_consumers(30)
        yield outlet, box, logged, itertools.count(1)
    finally:
        box.close()


samples = st.one_of(
    st.builds(lambda t: object_text({"key": t}), field_values),
    markers(),
    text,
    mutated_texts(st.just('{"key": "7"}')),
    st.integers(0, 200_000).map(lambda n: '{"key": ' + "[" * n + "]" * n + "}"),
)


@fuzz_settings(15)
@given(st.lists(samples, min_size=1, max_size=6))
def test_the_response_box_reads_on_after_hostile_samples(response_box, hostile):
    """Regression: a deeply nested sample ended the box's thread, and every later rating."""
    outlet, box, logged, keys = response_box
    for raw in hostile:
        outlet.push_sample([raw.encode(errors="replace").decode()])
    key = f"k{next(keys)}"
    outlet.push_sample([json.dumps({"key": key})])
    got: list[str] = []
    wait_until(lambda: got.extend(k for k, _ in box.presses()) or key in got, 20)
    assert box._thread.is_alive()
    assert all(isinstance(k, str) and k.isprintable() for k in got)


# -- eegs worker: ZeroMQ -----------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    procs = Processes()
    tmp = tmp_path_factory.mktemp("worker")
    (tmp / "protocol.toml").write_text(_protocol(2))
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    client = None
    try:
        proc = procs.eegs(
            "worker", "--protocol", str(tmp / "protocol.toml"), "--session", str(tmp / "s"),
            "--endpoint", endpoint,
        )  # fmt: skip
        client = GenerationClient(endpoint)
        status, _ = client.request(StatusRequest(), timeout_s=120)  # queued until it binds
        assert isinstance(status, StatusReply)
        yield proc, client, itertools.count(1)
    finally:
        if client is not None:
            client.close()
        procs.stop_all()


_MESSAGES: list[tuple[Message, tuple]] = [
    _epoch(1, "/elsewhere/x.png"),
    # another session's request: validated, then refused, so no round ever starts
    (ImageRequest(session="someone-else", block="b", round=1, n_images=4, trials=[1]), ()),
    (StatusRequest(), ()),
]


@st.composite
def _hostile_frames(draw) -> list[bytes]:
    msg, arrays = draw(st.sampled_from(_MESSAGES))
    frames = encode(msg, arrays)
    header = json.loads(frames[0])
    for key in draw(st.lists(st.sampled_from([*header, "extra"]), min_size=1, max_size=3)):
        header[key] = draw(field_values)
    raw = object_text(header).encode(errors="surrogatepass")
    extra = draw(st.sampled_from([frames[1:], [], [b"surplus"] * 3, [b"\0" * 7]]))
    if draw(st.booleans()):
        return [raw, *extra]
    return [draw(mutated_texts(st.just(raw.decode(errors="replace")))).encode(), *extra]


@fuzz_settings(25)
@given(st.lists(_hostile_frames(), min_size=1, max_size=4))
def test_the_worker_answers_every_hostile_frame_and_keeps_scoring(worker, hostile):
    proc, client, trials = worker
    for frames in hostile:
        client.send_frames(frames)
        reply, _ = client.receive(30)  # every request is answered, if only with an error
        assert isinstance(reply, ErrorReply | RewardReply | StatusReply), reply
    trial = 1000 + next(trials)
    msg, x = _epoch(trial, "/elsewhere/x.png")
    reply, _ = client.request(msg, (x,), timeout_s=30)
    assert isinstance(reply, RewardReply)
    assert reply.trial_id == trial
    assert proc.poll() is None


def _corpus_frames() -> list[tuple[str, list[bytes]]]:
    """(what, frames): every one must get an ErrorReply, or a RewardReply not used."""
    msg, x = _epoch(500, "/x/y.png")
    header = json.loads(encode(msg, (x,))[0])

    def with_(**changes) -> list[bytes]:
        return [json.dumps({**header, **changes}).encode(), x.tobytes()]

    big = {"shape": [10**12, 10**12], "dtype": "float32"}
    return [
        ("no frame bytes", [b""]),
        ("binary", [b"\xff\xfe\x00\x01"]),
        ("JSON null", [b"null"]),
        ("JSON list", [b"[1, 2]"]),
        ("NaN token", [b'{"type": "status_request", "v": NaN}']),
        ("deep", [b'{"type": "status_request", "v": 1, "x": ' + _DEEP.encode() + b"}"]),
        ("bool version", [json.dumps({"type": "status_request", "v": True}).encode()]),
        ("huge version", [json.dumps({"type": "status_request", "v": 10**400}).encode()]),
        ("type not str", [json.dumps({"type": ["epoch"], "v": SCHEMA_VERSION}).encode()]),
        ("terabyte array", with_(arrays=[big])),
        ("negative shape", with_(arrays=[{"shape": [-3, 301], "dtype": "float32"}])),
        ("object dtype", with_(arrays=[{"shape": [3, 301], "dtype": "object"}])),
        ("no array frame", [encode(msg, (x,))[0]]),
        ("extra frames", [*encode(msg, (x,)), b"surplus"]),
        ("NaN sfreq", with_(sfreq=float("nan"))),
        ("inf tmin", with_(tmin=float("inf"))),
        ("zero sfreq", with_(sfreq=0.0)),
        ("negative sfreq", with_(sfreq=-250.0)),
        ("bool trial", with_(trial_id=True)),
        ("float trial", with_(trial_id=1.5)),
        ("100k channels", with_(ch_names=[f"E{i}" for i in range(100_000)])),
        ("NUL in image path", with_(marker={**header["marker"], "image": "/tmp/a\u0000b.png"})),
        ("device path", with_(marker={**header["marker"], "image": "/dev/zero"})),
        ("traversal", with_(marker={**header["marker"], "image": "../../../../etc/shadow"})),
        ("marker image not str", with_(marker={**header["marker"], "image": {"a": [1]}})),
        (
            "request of 10^9 images",
            [
                json.dumps(
                    {
                        "type": "image_request",
                        "v": SCHEMA_VERSION,
                        "session": "s",
                        "block": "b",
                        "round": 1,
                        "n_images": 10**9,
                        "deadline_s": 5.0,
                    }
                ).encode()
            ],
        ),  # fmt: skip
        (
            "negative deadline",
            [
                json.dumps(
                    {
                        "type": "image_request",
                        "v": SCHEMA_VERSION,
                        "session": "s",
                        "block": "b",
                        "round": 1,
                        "n_images": 4,
                        "deadline_s": -1.0,
                    }
                ).encode()
            ],
        ),  # fmt: skip
        ("another session", with_(session="someone-else")),
    ]


def test_a_corpus_of_hostile_frames_is_answered_and_the_worker_keeps_serving(worker):
    """Frames nobody generates at random: each gets an error reply or an unused reward."""
    proc, client, _ = worker
    for what, frames in _corpus_frames():
        client.send_frames(frames)
        reply, _ = client.receive(30)
        assert isinstance(reply, ErrorReply | RewardReply), (what, reply)
        if isinstance(reply, RewardReply):
            assert not reply.used, what
            assert reply.reason, what
        else:
            assert reply.detail, what
    big = np.zeros((3, 301), np.float32)
    msg, _ = _epoch(501, "/x/y.png")
    reply, _ = client.request(msg.model_copy(update={"arrays": [array_spec(big)]}), (big,))
    assert isinstance(reply, RewardReply)
    assert proc.poll() is None


@pytest.mark.parametrize("deadline", [1e300, 1e308, 10.0**20])
def test_an_image_request_with_a_huge_deadline_is_an_error_reply(worker, deadline):
    """Regression: a finite, huge deadline_s overflowed into the worker's poll timeout."""
    proc, client, _ = worker
    request = json.loads(encode(ImageRequest(session="s", block="b", round=1, n_images=4))[0])
    request.update(deadline_s=deadline, v=SCHEMA_VERSION)
    client.send_frames([json.dumps(request).encode()])
    reply, _ = client.receive(30)
    assert isinstance(reply, ErrorReply)
    assert "deadline_s" in reply.detail
    status, _ = client.request(StatusRequest(), timeout_s=30)
    assert isinstance(status, StatusReply)
    time.sleep(0.2)
    assert proc.poll() is None
