"""Parts of the presentation that need no window: protocol checks, image sources, ZeroMQ."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pylsl
import pytest
import zmq
from helpers import wait_until
from PIL import Image

from app.presentation.frames import FrameRecorder, load_frames
from app.presentation.images import (
    BatchFailure,
    FolderPlan,
    GeneratorClient,
    ImageFailure,
    ImageLoader,
    ImageRef,
    ImageSourceError,
    StimulusImage,
    fit_size,
    list_images,
    presentation_order,
)
from experiment_protocols import ProtocolError, load_protocol
from workers.messages import ErrorReply, ImageInfo, ImageRequest, decode, encode, encode_image_batch


def _write(tmp_path, text: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_default_protocol_documents_a_valid_presentation_section():
    pres = load_protocol().presentation
    assert [b.kind for b in pres.blocks] == ["calibration", "closed_loop", "validation"]
    assert pres.screen.refresh_hz == 60.0
    assert pres.keys.abort == "escape"


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        (
            "[presentation.timing]\nstimulus_s = 0.012\nstimulus_jitter_s = 0.0\n",
            "stimulus_jitter_s = 0.0120 s is shorter than one frame (16.67 ms",
        ),
        (
            "[presentation.screen]\nrefresh_hz = 144.0\n[presentation.timing]\n"
            "stimulus_s = 0.05\nstimulus_jitter_s = 0.045\n",
            "shorter than one frame (6.94 ms at screen.refresh_hz = 144)",
        ),
        ("[presentation.timing]\nfixation_s = 0.1\nfixation_jitter_s = 0.2\n", "is negative"),
        ('[presentation]\nlate_image_policy = "pool"\n', "needs pool_folder"),
        ('[presentation.keys]\npause = "escape"\n', "must differ"),
        ('[[presentation.blocks]]\nkind = "warmup"\n', "presentation.blocks.0.kind"),
        ("[presentation.ratings]\nlow = 5\nhigh = 5\n", "must be greater than low"),
        ("[presentation.timing]\nstimulus_s = 1.0\nstimulus_time = 2\n", "unknown key"),
    ],
)
def test_impossible_presentation_settings_are_rejected_at_load(tmp_path, toml, match):
    path = _write(tmp_path, toml)
    with pytest.raises(ProtocolError, match=re.escape(match)) as err:
        load_protocol(path)
    assert str(path) in str(err.value)


def test_a_stimulus_of_exactly_one_frame_is_accepted(tmp_path):
    path = _write(tmp_path, "[presentation.timing]\nstimulus_s = 0.016667\nstimulus_jitter_s = 0\n")
    assert load_protocol(path).presentation.timing.stimulus_s == pytest.approx(1 / 60, abs=1e-5)


def _image_folder(root, sizes=((64, 48),) * 3, labels=("amusement", "sadness")):
    rng = np.random.default_rng(0)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / label / f"{i}.png"
            )
    return root


def test_folder_plan_labels_from_subfolders_balances_and_does_not_repeat(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    refs = list_images(root)
    assert {r.label for r in refs} == {"amusement", "sadness"}
    assert all(r.path.is_absolute() for r in refs)
    plan = FolderPlan(root, seed=3)
    first = plan.draw(6)
    assert len({r.path for r in first}) == 6  # the whole folder before any repeat
    assert [r.label for r in first[:2]] != [first[0].label] * 2  # labels alternate
    assert sorted(r.label for r in first[:4]) == ["amusement"] * 2 + ["sadness"] * 2
    again = FolderPlan(root, seed=3).draw(6)
    assert [r.path for r in again] == [r.path for r in first]
    assert len(plan.draw(7, round_=2)) == 7  # reshuffles when it runs out
    with pytest.raises(ImageSourceError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="holds no image"):
        list_images(tmp_path / "empty")


def test_loader_decodes_in_order_and_reports_a_broken_file(tmp_path):
    root = _image_folder(tmp_path / "imgs", labels=("x",))
    broken = root / "x" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    loader = ImageLoader(lookahead=2)
    refs = [ImageRef(root / "x" / "0.png"), ImageRef(broken), ImageRef(root / "x" / "1.png")]
    for ref in refs:
        loader.submit(ref)
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        item = loader.poll()
        if item is not None:
            got.append(item)
        time.sleep(0.005)
    loader.close()
    assert [type(g) for g in got] == [StimulusImage, ImageFailure, StimulusImage]
    assert got[0].pixels.shape == (48, 64, 4)
    assert got[0].pixels.dtype == np.uint8
    assert got[0].size == (64, 48)
    expected = np.asarray(Image.open(root / "x" / "0.png").convert("RGBA"))
    np.testing.assert_array_equal(got[0].pixels, expected)  # top row first
    assert "not a readable image" in got[1].reason


def test_fit_size_keeps_the_aspect_inside_the_box():
    assert fit_size((200, 100), (0.8, 0.8)) == pytest.approx((0.8, 0.4))
    assert fit_size((100, 200), (0.8, 0.8)) == pytest.approx((0.4, 0.8))
    assert fit_size((100, 100), (1.2, 0.6)) == pytest.approx((0.6, 0.6))


def _client(tmp_path, free_port):
    loader = ImageLoader()
    events: list[tuple[str, dict]] = []
    client = GeneratorClient(
        f"tcp://127.0.0.1:{free_port}",
        tmp_path / "session",
        loader,
        on_event=lambda e, **f: events.append((e, f)),
    )
    return loader, client, events


@pytest.fixture
def generator_link(tmp_path, free_port):
    """A ROUTER where the worker would be, and a client and loader connected to it."""
    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(f"tcp://127.0.0.1:{free_port}")
    loader, client, events = _client(tmp_path, free_port)
    yield server, loader, client, events
    client.close()
    loader.close()
    server.close()


def _poll(loader, n, timeout=10.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        item = loader.poll()
        if item is not None:
            out.append(item)
        time.sleep(0.005)
    return out


def test_generator_client_stores_received_images_with_provenance(generator_link):
    server, loader, client, events = generator_link
    client.request(ImageRequest(session="s", block="closed_loop", round=2, n_images=2), "r2")
    assert server.poll(5000)
    identity, empty, *frames = server.recv_multipart()
    req, _ = decode(frames)
    assert (empty, req.round, req.n_images) == (b"", 2, 2)
    raw = np.zeros((32, 16, 3), np.uint8)
    raw[:8] = 255  # top rows white
    reply = encode_image_batch(
        "s",
        2,
        [(ImageInfo(image_id="a", provenance={"seed": 11, "parents": ["x"]}), raw)] * 1
        + [(ImageInfo(image_id="b", label="sadness"), raw)],
    )
    server.send_multipart([identity, b"", *reply])
    images = _poll(loader, 2)
    assert [type(i) for i in images] == [StimulusImage, StimulusImage]
    a = images[0]
    assert a.ref.path == client.session_dir / "images" / "r2" / "a.png"
    np.testing.assert_array_equal(a.pixels[:8, :, :3], 255)  # stored upright as PNG
    side = json.loads(a.ref.path.with_suffix(".json").read_text())
    assert side["provenance"] == {"seed": 11, "parents": ["x"]}
    assert side["sha256"] == a.sha256
    assert images[1].ref.label == "sadness"
    # logged as it came, before it was stored; each image usable once its file was written
    wait_until(lambda: len(events) == 3)
    assert [e for e, _ in events] == ["image_request", "image_batch", "image_batch_stored"]
    batch = events[1][1]
    assert (batch["block"], batch["held"]) == ("closed_loop", False)
    assert batch["t_received_lsl"] <= a.t_ready <= images[1].t_ready
    assert events[2][1]["failed"] == 0


def _answer(server, n: int = 2, error: str | None = None) -> ImageRequest:
    """Answer the next request the way the worker does: a batch, or an error."""
    assert server.poll(5000)
    identity, _, *frames = server.recv_multipart()
    req, _ = decode(frames)
    if error is not None:
        reply = encode(ErrorReply(error=error, detail=""))
    else:
        raw = np.full((8, 8, 3), 7 * req.round, np.uint8)
        infos = [ImageInfo(image_id=f"{req.block}-{req.round}-{i}") for i in range(n)]
        reply = encode_image_batch("s", req.round, [(info, raw) for info in infos])
    server.send_multipart([identity, b"", *reply])
    return req


def test_a_round_asked_ahead_is_stored_and_held_ready_until_its_block_begins(generator_link):
    server, loader, client, events = generator_link
    ahead = ImageRequest(session="s", block="loop", round=0, n_images=2)
    client.request(ahead, "round-00", hold=True)
    _answer(server)
    wait_until(lambda: any(e == "image_batch_stored" for e, _ in events))
    time.sleep(0.2)
    assert loader.poll() is None  # held: another block's images are being shown
    assert sorted(p.name for p in (client.session_dir / "images/round-00").iterdir()) == [
        "loop-0-0.json", "loop-0-0.png", "loop-0-1.json", "loop-0-1.png",
    ]  # fmt: skip
    # the same round of another block is not this one: it goes to the loader at once
    client.request(ImageRequest(session="s", block="other", round=0, n_images=2), "o")
    _answer(server)
    other = _poll(loader, 2)
    assert [i.ref.path.parent.name for i in other] == ["o", "o"]
    t_release = pylsl.local_clock()
    client.release("loop", 0)
    held = _poll(loader, 2)
    assert [i.ref.path.name for i in held] == ["loop-0-0.png", "loop-0-1.png"]
    assert all(i.t_ready < t_release for i in held)  # ready long before it was needed
    batches = [f for e, f in events if e == "image_batch"]
    assert [(b["block"], b["held"]) for b in batches] == [("loop", True), ("other", False)]
    asked = [f for e, f in events if e == "image_request"]
    assert [a["ahead"] for a in asked] == [True, False]


@pytest.mark.parametrize(("n", "k"), [(1, 3), (2, 2), (5, 4), (8, 1)])
def test_presentation_order_shows_each_image_k_times_never_twice_in_a_row(n, k):
    for seed in range(20):
        order = presentation_order(n, k, (seed, 7))
        assert sorted(order) == sorted(list(range(n)) * k)
        if n > 1:
            assert all(a != b for a, b in zip(order, order[1:], strict=False))
        assert order == presentation_order(n, k, (seed, 7))  # a resumed session's order
    assert presentation_order(n, 1, 0) == list(range(n))  # once: the worker's order
    assert len({tuple(presentation_order(5, 3, s)) for s in range(10)}) > 1


def test_a_round_shown_twice_goes_to_the_loader_in_passes_and_is_stored_once(generator_link):
    server, loader, client, events = generator_link
    req = ImageRequest(session="s", block="loop", round=1, n_images=3)
    client.request(req, "r1", presentations=2, order_seed=(0, 1))
    _answer(server, n=3)
    images = _poll(loader, 6)
    names = [i.ref.path.name for i in images]
    assert names == [f"loop-1-{i}.png" for i in presentation_order(3, 2, (0, 1))]
    assert sorted(p.name for p in (client.session_dir / "images" / "r1").glob("*.png")) == [
        "loop-1-0.png", "loop-1-1.png", "loop-1-2.png",
    ]  # fmt: skip


def test_presentations_are_refused_on_a_folder_block(tmp_path):
    path = _write(
        tmp_path,
        '[[presentation.blocks]]\nkind = "calibration"\nn_trials = 4\npresentations = 2\n',
    )
    with pytest.raises(ProtocolError, match=r"presentation\.blocks\.0.*needs source = 'generator'"):
        load_protocol(path)


def test_a_round_released_before_it_comes_goes_to_the_loader_as_it_comes(generator_link):
    server, loader, client, events = generator_link
    client.request(ImageRequest(session="s", block="loop", round=0, n_images=2), "r", hold=True)
    client.release("loop", 0)  # the block began before the worker answered
    _answer(server)
    images = _poll(loader, 2)
    assert [i.ref.path.name for i in images] == ["loop-0-0.png", "loop-0-1.png"]
    assert all(i.ref.path.is_file() for i in images)  # its file is there before it is shown
    ((batch,),) = [[f for e, f in events if e == "image_batch"]]
    assert batch["held"] is False


def test_a_round_asked_ahead_in_vain_is_asked_again_when_its_block_begins(generator_link):
    server, loader, client, events = generator_link
    client.request(ImageRequest(session="s", block="loop", round=0, n_images=2), "r", hold=True)
    _answer(server, error="generation_failed")
    wait_until(lambda: any(e == "image_batch_failed" for e, _ in events))
    time.sleep(0.2)
    assert loader.poll() is None  # the block being shown is not failed for it
    client.release("loop", 0)
    again = _answer(server)
    images = _poll(loader, 2)
    assert (again.block, again.round) == ("loop", 0)
    assert [type(i) for i in images] == [StimulusImage, StimulusImage]
    assert [f["ahead"] for e, f in events if e == "image_request"] == [True, False]


def test_generator_error_reply_fails_the_round_without_crashing(generator_link):
    server, loader, client, events = generator_link
    client.request(ImageRequest(session="s", block="b", round=0, n_images=4), "r0")
    assert server.poll(5000)
    identity, _, *_ = server.recv_multipart()
    server.send_multipart([identity, b"", *encode(ErrorReply(error="busy", detail="GPU"))])
    (failure,) = _poll(loader, 1)
    server.send_multipart([identity, b"", b"{not json"])  # unsolicited junk: logged
    time.sleep(0.3)
    assert isinstance(failure, BatchFailure)
    assert failure.round == 0
    assert "busy" in failure.reason
    assert ("image_batch_failed", {"rounds": [0], "reason": "generator error: busy GPU"}) in events


def test_frame_recorder_counts_dropped_frames_and_saves(tmp_path):
    rec = FrameRecorder(refresh_hz=60.0, margin_ms=4.0)
    t = 0.0
    for k, dt in enumerate([0, 1 / 60, 1 / 60, 2 / 60, 1 / 60, 0.0205]):
        t += dt
        rec.add(t, 0.1 * k, 0.2, "stimulus" if k % 2 else "blank")
    assert rec.dropped(0, 5) == 1  # 33 ms; 20.5 ms is within the 4 ms margin
    assert rec.intervals_ms(2, 3) == pytest.approx([1000 / 60, 2000 / 60])
    summary = rec.summary()
    assert summary["dropped_frames"] == 1
    assert summary["own_cpu_ms"]["max"] == pytest.approx(0.5)
    rec.save(tmp_path)
    back = load_frames(tmp_path)
    assert back["flip_lsl"].tolist() == list(rec.flip_lsl)
    assert back["phase_names"][back["phase"][1]] == "stimulus"
