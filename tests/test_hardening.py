"""Session files that survive faults, and CURVE keys a lab can make and trust."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import zmq
import zmq.auth
from conftest import REPO
from zmq.auth.thread import ThreadAuthenticator

from experiment_protocols import ProtocolError, load_protocol
from workers import transport
from workers.session_store import EVENTS_FILE, TORN_FILE, SessionStore, read_events

pytestmark = pytest.mark.timeout(60)


def _eegs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
        timeout=50,
    )  # fmt: skip


def test_a_torn_last_line_is_set_aside_before_the_next_append(tmp_path):
    store = SessionStore(tmp_path).open(role="test")
    store.log("trial", trial=1)
    store.close()
    with (tmp_path / EVENTS_FILE).open("ab") as fh:
        fh.write(b'{"event": "trial", "tri')  # power cut mid-write
    store = SessionStore(tmp_path).open(role="resume")  # eegs resume appends again
    store.log("trial", trial=2)
    store.close()
    events = list(read_events(tmp_path / EVENTS_FILE))
    assert [e["trial"] for e in events if e["event"] == "trial"] == [1, 2]
    assert (tmp_path / TORN_FILE).read_bytes() == b'{"event": "trial", "tri\n'


def test_a_corrupt_line_is_skipped_not_fatal(tmp_path, caplog):
    (tmp_path / EVENTS_FILE).write_bytes(
        b'{"event": "a"}\n\x00\xff garbage\n[1, 2]\n{"event": "b"}\n'
    )
    with caplog.at_level("WARNING", logger="eegs.session"):
        events = list(read_events(tmp_path / EVENTS_FILE))
    assert [e["event"] for e in events] == ["a", "b"]
    assert "line 2 is not a JSON object" in caplog.text


def test_a_corrupt_session_json_exits_2_naming_the_file(tmp_path):
    SessionStore(tmp_path).open(role="test").close()
    (tmp_path / "session.json").write_text('{"status": "runn')
    res = _eegs("summarize", str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "session.json" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("value", ["*", " * ", ""])
def test_allowing_any_curve_key_is_refused(tmp_path, value):
    path = tmp_path / "p.toml"
    path.write_text(f'[network]\ncurve_authorized_dir = "{value}"\n')
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "network.curve_authorized_dir"


def test_a_server_with_no_authorised_key_does_not_start(tmp_path):
    ctx = zmq.Context.instance()
    zmq.auth.create_certificates(str(tmp_path), "server")
    secret = str(tmp_path / "server.key_secret")
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        with pytest.raises(transport.InsecureEndpointError, match="no client could connect"):
            transport.bind(
                ctx, zmq.ROUTER, "tcp://0.0.0.0:5999", secret_key=secret, authorized_dir=str(folder)
            )


def test_eegs_keys_makes_a_layout_curve_accepts(tmp_path):
    keys = tmp_path / "keys"
    res = _eegs("keys", "--dir", str(keys), "gpu", "lab")
    assert res.returncode == 0, res.stderr
    assert f'network.curve_authorized_dir = "{keys / "authorized-on-gpu"}"' in res.stdout
    assert sorted(p.name for p in (keys / "authorized-on-gpu").iterdir()) == ["lab.key"]
    again = _eegs("keys", "--dir", str(keys), "gpu", "lab")
    assert again.returncode == 2  # never overwrites a secret key
    assert "refusing to overwrite" in again.stderr

    # a real CURVE handshake with these files (on loopback, CURVE forced on)
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / "authorized-on-gpu"))
    server = ctx.socket(zmq.REP)
    server.setsockopt(zmq.LINGER, 0)
    server.curve_publickey, server.curve_secretkey = zmq.auth.load_certificate(
        str(keys / "gpu.key_secret")
    )
    server.curve_server = True
    port = server.bind_to_random_port("tcp://127.0.0.1")
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    zmq.auth.create_certificates(str(stranger_dir), "x")
    try:
        replies = {}
        for who, secret in (("lab", keys / "lab.key_secret"), ("x", stranger_dir / "x.key_secret")):
            client = ctx.socket(zmq.REQ)
            client.setsockopt(zmq.LINGER, 0)
            client.curve_publickey, client.curve_secretkey = zmq.auth.load_certificate(str(secret))
            client.curve_serverkey, _ = zmq.auth.load_certificate(str(keys / "gpu.key"))
            client.connect(f"tcp://127.0.0.1:{port}")
            client.send(b"ping")
            if server.poll(2000):
                server.send(server.recv())
            replies[who] = client.recv() if client.poll(2000) else None
            client.close()
        assert replies == {"lab": b"ping", "x": None}  # only the authorised key gets in
    finally:
        server.close()
        auth.stop()
        ctx.term()
    info = json.dumps(res.stdout)
    assert "curve_public_key" in info


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[generation]\ndeadline_s = 1e308\n", "generation.deadline_s"),
        ("[generation]\nreward_wait_s = nan\n", "generation.reward_wait_s"),
        ("[streams]\nbuffer_s = inf\n", "streams.buffer_s"),
        ("[streams]\nbuffer_s = 1e12\n", "streams.buffer_s"),
        ("[epochs]\ntmax = 1e9\n", "epochs.tmax"),
        ("[preprocessing]\nresample_hz = 1e15\n", "preprocessing.resample_hz"),
        ("[generation.sdxl]\nwidth = 1048576\n", "generation.sdxl.width"),
        ("[generation.heuristic]\ninner_steps = 100000000\n", "generation.heuristic.inner_steps"),
        ("[brain_model]\nsnr = nan\n", "brain_model.snr"),
        ("[presentation.timing]\nstimulus_s = -inf\n", "presentation.timing.stimulus_s"),
    ],
)
def test_absurd_or_non_finite_numbers_are_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == field


def test_a_protocol_that_is_not_a_small_regular_file_is_refused(tmp_path):
    with pytest.raises(ProtocolError, match="not a regular file"):
        load_protocol("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 21) + "\n")
    with pytest.raises(ProtocolError, match="larger than"):
        load_protocol(big)
    res = _eegs("doctor", "--protocol", "/dev/zero", "--timeout", "0.2")
    assert res.returncode == 2
    assert "/dev/zero" in res.stderr


def test_a_repeated_trial_id_never_overwrites_an_epoch(tmp_path):
    import numpy as np

    store = SessionStore(tmp_path).open(role="test")
    first = store.write_epoch(7, np.zeros((2, 3)), {"trial_id": 7})
    again = store.write_epoch(7, np.ones((2, 3)), {"trial_id": 7})
    store.close()
    assert first.name == "epoch-000007.npz"
    assert again.name == "repeated-000007-1.npz"
    (only,) = SessionStore(tmp_path).epochs()
    assert only.data.sum() == 0  # the first epoch is the trial's; the repeat is kept beside
    for bad in (True, -1, 2.0):
        with pytest.raises(ValueError, match="non-negative integer"):
            SessionStore(tmp_path).write_epoch(bad, np.zeros((2, 3)), {})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "exceeds"),
        ('{"event": "x", "a": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper"),
        ('{"event": "x", "a": ' + "[" * 40 + "]" * 40 + "}", "nests deeper"),
        ('{"event": "x", "pad": "' + "x" * 70_000 + '"}', "exceeds"),
        ("[1, 2]", "expected a JSON object"),
        ('{"trial": 1}', "no string 'event'"),
        ("{nope", "not JSON"),
    ],
)
def test_hostile_markers_are_refused_with_a_reason(text, reason):
    from workers.messages import MessageError, parse_marker

    with pytest.raises(MessageError, match=reason):
        parse_marker(text)


def test_a_deeply_nested_message_header_is_an_error_reply_not_a_crash():
    from workers.messages import MessageError, decode

    header = b'{"type": "status_request", "v": 1, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(MessageError, match="nests deeper"):
        decode([header])


def test_a_child_that_outlives_the_session_process_does_not_complete_the_session(tmp_path):
    session = SessionStore(tmp_path).open(role="session")
    worker = SessionStore(tmp_path).open(role="generation")
    # the session process is SIGKILLed here: it never closes; its child ends cleanly
    worker.close("completed")
    info = SessionStore(tmp_path).read_info()
    assert info["status"] == "running"  # not "completed": eegs resume will take it
    assert info["processes"]["generation"]["status"] == "completed"
    session.close("crashed")
    assert SessionStore(tmp_path).read_info()["status"] == "crashed"


def test_a_standalone_process_owns_its_session(tmp_path):
    SessionStore(tmp_path).open(role="acquisition").close("completed")
    assert SessionStore(tmp_path).read_info()["status"] == "completed"


@pytest.mark.timeout(90)
def test_children_stop_when_the_session_process_is_killed(processes, tmp_path, stream_name):
    import os
    import signal
    import time

    script = (
        "import sys, time\n"
        "from app.supervisor import Supervisor\n"
        "from workers.session_store import SessionStore\n"
        f"store = SessionStore({str(tmp_path)!r}).open(role='session')\n"
        "child = Supervisor(store).start('brain-model', ['brain-model', '--name', "
        f"{stream_name!r}, '--channels', '8', '--sfreq', '250'])\n"
        "print(child.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    session = processes.start([sys.executable, "-c", script])
    child_pid = int(session.stdout.readline())
    processes.adopt(child_pid)
    time.sleep(3)  # the brain model streams
    os.kill(session.pid, signal.SIGKILL)  # the session process dies without a word
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the brain model kept streaming after its session process died")
    info = SessionStore(tmp_path).read_info()
    assert info["status"] == "running"  # unfinished: eegs resume takes it


def _bomb_png(path, side: int = 100_000) -> None:
    """A valid tiny PNG whose header claims side x side pixels."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 4  # signature, chunk length
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_a_reason_not_a_crash(tmp_path):
    from app.presentation.images import ImageRef, read_image
    from models.backends.base import BackendUnavailableError
    from models.backends.pool import _open_rgb

    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    with pytest.raises(ValueError, match="not a readable image|exceeds"):
        read_image(ImageRef(bomb, None, 0))
    with pytest.raises(BackendUnavailableError, match="cannot read pool image"):
        _open_rgb(bomb)


def test_rewards_survive_an_embedding_failure(tmp_path):
    from PIL import Image

    from models.backends.procedural import ProceduralBackend, procedural_pool
    from models.rewards.lpp import LppReward
    from workers.generation.service import GenerationService

    protocol = load_protocol()
    backend = ProceduralBackend(size=64, fit_samples=64, seed=0)
    pool = procedural_pool(backend, 16, seed=0)
    service = GenerationService(protocol, backend, pool, LppReward((0.4, 0.8), ["Pz"], 5.0))
    image = tmp_path / "calibration.png"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(image)
    service.credit(1, "calibration", None, str(image), 0.7)
    real = backend.embed

    def out_of_memory(images):
        raise RuntimeError("CUDA out of memory")

    backend.embed = out_of_memory
    with pytest.raises(RuntimeError, match="out of memory"):
        service._drain()
    assert service.generator.n_observations == 0
    backend.embed = real
    service._drain()  # the next round: the reward is still there
    assert service.generator.ids == ["calibration"]
    assert service.generator.rewards == [0.7]
    service.close()


def test_a_worker_takes_only_its_own_sessions_messages(tmp_path):
    import numpy as np

    from models.backends.procedural import ProceduralBackend, procedural_pool
    from models.rewards.lpp import LppReward
    from workers.generation.service import GenerationService
    from workers.messages import EpochMessage, ErrorReply, RewardReply, decode, encode

    store = SessionStore(tmp_path / "S01-2026").open(role="generation")
    backend = ProceduralBackend(size=64, fit_samples=64, seed=0)
    service = GenerationService(
        load_protocol(), backend, procedural_pool(backend, 16, seed=0),
        LppReward((0.4, 0.8), ["Pz"], 5.0), store,
    )  # fmt: skip
    x = np.zeros((1, 301), np.float32)

    def epoch(session: str) -> list[bytes]:
        msg = EpochMessage.of(x, session=session, trial_id=3, marker={"event": "stimulus_onset"},
                              ch_names=["Pz"], sfreq=250.0, tmin=-0.2)  # fmt: skip
        return encode(msg, (x,))

    stranger, _ = decode(service.handle(epoch("someone-else")))
    assert isinstance(stranger, ErrorReply)
    assert stranger.error == "wrong_session"
    own, _ = decode(service.handle(epoch("S01-2026")))
    assert isinstance(own, RewardReply)
    service.close()
    store.close()


def test_damaged_files_are_reasons_not_tracebacks(tmp_path):
    import numpy as np

    bad_xdf = tmp_path / "bad.xdf"
    bad_xdf.write_bytes(b"XDF:" + bytes(range(256)) * 4)
    res = _eegs("replay", str(bad_xdf))
    assert res.returncode == 2, res.stderr[-1000:]
    assert "not a readable XDF file" in res.stderr
    assert "Traceback" not in res.stderr

    store = SessionStore(tmp_path / "s").open(role="test")
    store.write_epoch(1, np.ones((2, 5)), {"trial_id": 1})
    path = store.write_epoch(2, np.ones((2, 5)), {"trial_id": 2})
    store.close()
    path.write_bytes(path.read_bytes()[:40])  # truncated by a full disk
    assert [e.trial_id for e in SessionStore(tmp_path / "s").epochs()] == [1]
