"""`eegs worker` as a real process on real ZeroMQ sockets."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from conftest import Processes, run_eegs
from PIL import Image
from safetensors.numpy import load_file

from workers.generation.service import GenerationClient
from workers.messages import (
    MAX_HEADER_BYTES,
    SCHEMA_VERSION,
    EpochMessage,
    ErrorReply,
    ImageBatch,
    ImageRequest,
    RewardReply,
    StatusReply,
    StatusRequest,
    array_spec,
    encode,
)
from workers.session_store import read_events

_PROTOCOL = """
[network]
epochs_endpoint = "{epochs}"
[generation]
session = "s"  # the session name these tests send
subscribe_epochs = {subscribe}
max_request_bytes = 65536
deadline_s = 60.0
reward_wait_s = 5.0
[generation.procedural]
size = 64
pool_size = 48
fit_samples = 256
[generation.heuristic]
inner_steps = {inner_steps}
[generation.gp]
fit_iters = 20
refit_iters = 3
"""


def _protocol(inner_steps: int, epochs: str = "tcp://127.0.0.1:1", subscribe: bool = False) -> str:
    return _PROTOCOL.format(
        inner_steps=inner_steps, epochs=epochs, subscribe=str(subscribe).lower()
    )


def _start(
    processes: Processes, tmp_path, port: int, inner_steps: int, epochs: str | None = None
) -> GenerationClient:
    protocol = tmp_path / "protocol.toml"
    if epochs is None:
        protocol.write_text(_protocol(inner_steps))
    else:
        protocol.write_text(_protocol(inner_steps, epochs, subscribe=True))
    endpoint = f"tcp://127.0.0.1:{port}"
    processes.eegs(
        "worker", "--protocol", str(protocol), "--session", str(tmp_path / "session"),
        "--endpoint", endpoint,
    )  # fmt: skip
    client = GenerationClient(endpoint)
    status, _ = client.request(StatusRequest(), timeout_s=120)  # queued until it binds
    assert isinstance(status, StatusReply)
    assert status.ready
    return client


def _epoch(trial: int, image_path: str, bump_uv: float = 0.0) -> tuple[EpochMessage, np.ndarray]:
    rng = np.random.default_rng(trial)
    x = rng.normal(0, 2, (3, 301)).astype(np.float32)
    t = -0.2 + np.arange(301) / 250.0
    x[0, (t >= 0.4) & (t <= 0.8)] += bump_uv
    msg = EpochMessage.of(
        x,
        session="s",
        trial_id=trial,
        marker={"event": "stimulus_onset", "trial": trial, "image": image_path},
        ch_names=["Pz", "Oz", "Cz"],
        sfreq=250.0,
        tmin=-0.2,
    )
    return msg, x


def _show(client: GenerationClient, batch: ImageBatch, first_trial: int) -> list[int]:
    """Send one epoch per image (as the acquisition would) and check each reward."""
    trials = []
    for j, info in enumerate(batch.images):
        trial = first_trial + j
        msg, x = _epoch(trial, f"/elsewhere/images/round/{info.image_id}.png", bump_uv=j)
        reply, _ = client.request(msg, (x,), timeout_s=30)
        assert isinstance(reply, RewardReply), reply
        assert reply.used
        assert reply.image_id == info.image_id
        assert 0.0 < reply.reward < 1.0
        trials.append(trial)
    return trials


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    import socket

    procs = Processes()
    tmp = tmp_path_factory.mktemp("worker")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = zmq.Context.instance().socket(zmq.PUB)  # stands in for `eegs acquire`
    publisher.setsockopt(zmq.LINGER, 0)
    epochs_port = publisher.bind_to_random_port("tcp://127.0.0.1")
    try:
        client = _start(procs, tmp, port, inner_steps=2, epochs=f"tcp://127.0.0.1:{epochs_port}")
        yield client, tmp / "session", publisher
        client.close()
    finally:
        procs.stop_all()
        publisher.close()


def test_rounds_rewards_and_provenance(worker):
    client, session, _ = worker
    first, arrays = client.request(
        ImageRequest(session="s", block="closed_loop", round=0, n_images=8), timeout_s=60
    )
    assert isinstance(first, ImageBatch), first
    assert len(first.images) == 8
    assert not first.deadline_missed
    assert {i.provenance["kind"] for i in first.images} == {"initial"}
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in arrays)
    trials = _show(client, first, 0)

    second, arrays = client.request(
        ImageRequest(session="s", block="closed_loop", round=1, n_images=8, trials=trials),
        timeout_s=60,
    )
    assert isinstance(second, ImageBatch), second
    assert not second.deadline_missed
    kinds = [i.provenance["kind"] for i in second.images]
    assert kinds.count("child") == 4
    assert {"nearest", "random"} <= set(kinds)
    round0 = {i.image_id for i in first.images}
    client.request(StatusRequest())  # files are written after the reply, before the next one
    for info in second.images:
        p = info.provenance
        assert p["backend"] == "procedural"
        assert p["model_ids"]["renderer"].startswith("eegs-procedural")
        assert p["wall_time_s"] >= 0
        emb = load_file(str(session / p["embedding"]))["embedding"]
        assert emb.shape == (63,)
        sidecar = json.loads((session / p["embedding"]).with_suffix(".json").read_text())
        assert sidecar["image_id"] == info.image_id
        if p["kind"] == "child":
            assert p["inner_steps"] == 2
            assert isinstance(p["seed"], int)
            assert len(p["parents"]) == 2
            assert set(p["parents"]) <= round0
            assert len(p["procedural_params"]) == 18
            assert "conditioning" in load_file(str(session / p["embedding"]))
        else:
            assert p["pool_id"].startswith("proc-")
    assert second.timing_ms["generate_ms"] > 0
    _show(client, second, 100)
    events = [e["event"] for e in read_events(session / "events.jsonl")]
    assert events.count("reward") >= 16
    assert events.count("image_batch") >= 2
    assert "generation_ready" in events


def test_bad_requests_get_error_replies_and_the_worker_keeps_serving(worker, tmp_path):
    client, session, _ = worker

    def ask(frames: list[bytes]) -> ErrorReply:
        client.send_frames(frames)
        reply, _ = client.receive(30)
        assert isinstance(reply, ErrorReply), reply
        return reply

    assert ask([b"{not json"]).error == "invalid"
    header = json.loads(encode(StatusRequest())[0])
    header["v"] = SCHEMA_VERSION + 1
    wrong = ask([json.dumps(header).encode()])
    assert wrong.error == "invalid"
    assert "schema version" in wrong.detail
    big = np.zeros((3, 30000), np.float32)  # 360 kB > max_request_bytes = 64 kB
    msg, _ = _epoch(5, "/x/y.png")
    oversize = ask(encode(msg.model_copy(update={"arrays": [array_spec(big)]}), (big,)))
    assert oversize.error == "oversize"
    assert "65536" in oversize.detail
    assert ask([b"x" * (MAX_HEADER_BYTES + 1)]).error == "oversize"
    assert ask([json.dumps({"type": "teleport", "v": SCHEMA_VERSION}).encode()]).error == "invalid"
    msg, x = _epoch(6, "/x/y.png")
    assert ask(encode(msg, (x[:2],))).error == "invalid"  # 2 rows for 3 channels
    batch_header = {"type": "image_request", "v": SCHEMA_VERSION, "session": "s"}
    assert "Field required" in ask([json.dumps(batch_header).encode()]).detail
    status, _ = client.request(StatusRequest(), timeout_s=30)
    assert isinstance(status, StatusReply)
    assert status.ready
    unknown, _ = client.request(_epoch(900, "/not/issued/by/the/worker.png")[0], (x,))
    assert isinstance(unknown, RewardReply)
    assert not unknown.used
    assert "outside the session" in unknown.reason  # never even looked for
    outside = tmp_path / "outside.png"  # a real file, but not the session's or the pool's
    Image.new("RGB", (32, 32), (10, 20, 200)).save(outside)
    refused, _ = client.request(_epoch(903, str(outside))[0], (x,))
    assert not refused.used
    assert "outside the session" in refused.reason
    image = session / "stimuli" / "readable.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 20, 200)).save(image)
    first, _ = client.request(_epoch(901, str(image))[0], (x,))
    again, _ = client.request(_epoch(901, str(image))[0], (x,))  # the same trial twice
    assert first.used
    assert not again.used
    assert "already" in again.reason
    flagged = _epoch(902, str(image))[0].model_copy(update={"quality": {"flags": ["amplitude"]}})
    reply, _ = client.request(flagged, (x,))
    assert not reply.used
    assert "flagged" in reply.reason


def test_epochs_published_by_acquisition_are_rewarded(worker, tmp_path):
    client, session, publisher = worker
    image = session / "stimuli" / "calibration-amuse-01.png"  # embedded on arrival
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (250, 200, 20)).save(image)
    before = client.request(StatusRequest())[0].n_observations
    msg, x = _epoch(500, str(image), bump_uv=5.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # PUB/SUB drops messages until the link is up
        publisher.send_multipart(encode(msg, (x,)))
        status, _ = client.request(StatusRequest())
        if status.n_observations > before:
            break
        time.sleep(0.2)
    assert status.n_observations > before
    rewards = [e for e in read_events(session / "events.jsonl") if e["event"] == "reward"]
    assert any(e["image_id"] == image.stem and e["used"] for e in rewards)


def test_deadline_answers_with_the_images_that_are_ready(processes, tmp_path, free_port):
    client = _start(processes, tmp_path, free_port, inner_steps=100000)
    try:
        first, _ = client.request(
            ImageRequest(session="s", block="b", round=0, n_images=6), timeout_s=60
        )
        trials = _show(client, first, 0)
        late, _ = client.request(
            ImageRequest(
                session="s", block="b", round=1, n_images=8, trials=trials, deadline_s=1.5
            ),
            timeout_s=30,
        )
        assert isinstance(late, ImageBatch), late
        assert late.deadline_missed
        steps = [
            i.provenance["inner_steps"] for i in late.images if i.provenance["kind"] == "child"
        ]
        assert all(0 < s < 100000 for s in steps)
        assert any(i.provenance["kind"] in ("nearest", "random") for i in late.images)
        status, _ = client.request(StatusRequest(), timeout_s=30)  # still serving
        assert isinstance(status, StatusReply)
        assert not status.busy
    finally:
        client.close()


def test_non_loopback_endpoint_without_curve_is_refused(tmp_path, free_port):
    protocol = tmp_path / "p.toml"
    protocol.write_text(_protocol(inner_steps=1))
    res = run_eegs(
        "worker", "--protocol", str(protocol), "--session", str(tmp_path / "s"),
        "--endpoint", f"tcp://0.0.0.0:{free_port}", "--duration", "1",
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "CURVE" in res.stderr
