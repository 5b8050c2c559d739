"""The worker's parts alone (no sockets), and a fault in one part contained.

Scoring, the ledger, calibration, the round scheduler and provenance each run here on
real objects: the procedural backend, a real reward, a real session directory. Faults are
deliberate (a reward, a backend or a session-fitted reward built to fail), never mocks.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import zmq
from helpers import events_named, wait_until
from PIL import Image
from safetensors.numpy import load_file

from experiment_protocols import load_protocol
from models.backends.procedural import ProceduralBackend, procedural_pool
from models.heuristic import HeuristicGenerator
from models.rewards.base import EpochData, Reward
from models.rewards.lpp import LppReward
from workers import transport
from workers.generation.calibration import CalibrationGate
from workers.generation.jobs import RoundScheduler
from workers.generation.ledger import Issued, RewardLedger
from workers.generation.personal_fit import SessionFittedReward
from workers.generation.provenance import (
    GENERATION_DIR,
    ProvenanceWriter,
    assemble_batch,
)
from workers.generation.scoring import EpochScorer, epoch_of
from workers.generation.service import GenerationClient, GenerationService
from workers.messages import (
    EpochMessage,
    ErrorReply,
    ImageBatch,
    ImageRequest,
    RewardReply,
    StatusReply,
    StatusRequest,
    decode,
    encode,
)
from workers.session_store import SessionStore, read_events

pytestmark = pytest.mark.timeout(120)

_PROTOCOL = """
[generation]
session = "s"
deadline_s = 60.0
reward_wait_s = 0.0
[generation.procedural]
size = 64
pool_size = 24
fit_samples = 64
[generation.heuristic]
initial_images = 4
n_children = 2
inner_steps = 1
[generation.gp]
fit_iters = 10
refit_iters = 2
"""

CH = ["Pz", "Oz"]


@pytest.fixture(scope="module")
def backend() -> ProceduralBackend:
    return ProceduralBackend(size=64, fit_samples=64, seed=0)


@pytest.fixture(scope="module")
def pool(backend):
    return procedural_pool(backend, 24, seed=0)


@pytest.fixture
def protocol(tmp_path):
    path = tmp_path / "protocol.toml"
    path.write_text(_PROTOCOL)
    return load_protocol(path)


def _reward() -> LppReward:
    return LppReward((0.4, 0.8), ["Pz"], 5.0)


def _epoch(trial: int, marker: dict, flags=()) -> tuple[EpochMessage, list[np.ndarray]]:
    x = np.random.default_rng(trial).normal(0, 1, (len(CH), 301)).astype(np.float32)
    msg = EpochMessage.of(
        x, session="s", trial_id=trial, marker=marker, ch_names=CH, sfreq=250.0, tmin=-0.2,
        quality={"flags": list(flags)},
    )  # fmt: skip
    return msg, [x]


class _Events:
    """A stand-in session log: the events a part logs, in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, **fields) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict]:
        return [f for e, f in self.events if e == event]


def _issue(ledger: RewardLedger, image_id: str, dim: int = 63) -> np.ndarray:
    embedding = np.random.default_rng(len(ledger.issued)).normal(size=dim).astype(np.float32)
    ledger.issued[image_id] = Issued(embedding, 0, {"kind": "initial"})
    return embedding


def _due(poll, timeout_s: float = 60.0):
    """Poll a started request until it is due (the serving loop's part, without sockets)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        due = poll(time.monotonic())
        if due is not None:
            return due
        time.sleep(0.01)
    raise TimeoutError("the round never came due")


# -- scoring ------------------------------------------------------------------------------
def test_the_scorer_credits_an_issued_image_and_says_why_it_skips_others(protocol, tmp_path):
    log = _Events()
    ledger = RewardLedger(log)
    _issue(ledger, "r00-i00-abc")
    outside = tmp_path.parent / "elsewhere.png"
    scorer = EpochScorer(protocol.generation, _reward(), ledger, [tmp_path.resolve()], log)

    msg, arrays = _epoch(1, {"image_id": "r00-i00-abc"})
    reply = scorer.score(msg, epoch_of(msg, arrays))
    assert isinstance(reply, RewardReply)
    assert reply.used
    assert reply.image_id == "r00-i00-abc"
    assert 0.0 <= reply.reward <= 1.0
    assert ledger.trial_rewards == {1: reply.reward}
    assert ledger.n_pending() == 1
    assert ledger.best_reward == reply.reward

    again = scorer.score(msg, epoch_of(msg, arrays))
    assert not again.used
    assert again.reason == "this trial was rewarded already"
    msg, arrays = _epoch(2, {"image_id": "r00-i00-abc"}, flags=["amplitude"])
    assert "flagged" in scorer.score(msg, epoch_of(msg, arrays)).reason
    msg, arrays = _epoch(3, {"image": str(outside)})
    assert "outside" in scorer.score(msg, epoch_of(msg, arrays)).reason
    assert ledger.n_observations == 1
    assert [f["used"] for f in log.named("reward")] == [True, False, False, False]


def test_a_reward_that_is_not_finite_is_refused_not_logged_as_nan(protocol, tmp_path):
    log = _Events()
    ledger = RewardLedger(log)
    _issue(ledger, "r00-i00-abc")
    scorer = EpochScorer(
        protocol.generation, lambda epoch: float("nan"), ledger, [tmp_path.resolve()], log
    )
    msg, arrays = _epoch(1, {"image_id": "r00-i00-abc"})
    reply = scorer.score(msg, epoch_of(msg, arrays))
    assert isinstance(reply, ErrorReply)
    assert reply.error == "reward_failed"
    assert "nan" in reply.detail
    assert ledger.trial_rewards == {}
    assert ledger.n_observations == 0
    assert not log.named("reward")
    (failed,) = log.named("reward_failed")
    assert failed["trial_id"] == 1


def test_a_malformed_epoch_is_no_epoch():
    msg, arrays = _epoch(1, {})
    assert epoch_of(msg, [arrays[0][:1]]) is None  # one channel short
    assert epoch_of(msg, arrays + arrays) is None  # two arrays
    assert isinstance(epoch_of(msg, arrays), EpochData)


# -- the ledger -----------------------------------------------------------------------------
def test_the_ledger_drains_into_the_generator_and_embeds_image_files(
    protocol, backend, pool, tmp_path
):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    ledger = RewardLedger(_Events())
    image = tmp_path / "shown.png"
    Image.new("RGB", (64, 64), (30, 160, 90)).save(image)
    ledger.credit(1, "issued", _issue(ledger, "issued"), None, 0.25)
    ledger.credit(2, "shown", None, str(image), 0.75)
    ledger.drain(generator, backend.embed)
    assert sorted(zip(generator.ids, generator.rewards, strict=True)) == [
        ("issued", 0.25),
        ("shown", 0.75),
    ]
    assert ledger.n_pending() == 0


def test_the_ledger_averages_an_image_shown_twice_into_one_observation(protocol, backend, pool):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    ledger = RewardLedger(_Events())
    embedding = _issue(ledger, "twice")
    ledger.credit(1, "twice", embedding, None, 0.2)
    ledger.credit(2, "once", _issue(ledger, "once"), None, 0.9)
    ledger.drain(generator, backend.embed)
    ledger.credit(3, "twice", embedding, None, 0.6)  # its second presentation, a drain later
    ledger.drain(generator, backend.embed)
    assert ledger.trial_rewards == {1: 0.2, 2: 0.9, 3: 0.6}  # every trial kept
    assert sorted(zip(generator.ids, generator.rewards, generator.n_rewards, strict=True)) == [
        ("once", 0.9, 1),
        ("twice", pytest.approx(0.4), 2),
    ]


# -- calibration ------------------------------------------------------------------------------
class _ThresholdReward(SessionFittedReward):
    """A session-fitted reward small enough to read: the fit is the mean of the kept epochs."""

    what = "the test threshold"

    def __init__(self, fail: bool = False) -> None:
        self.kept: list[float] = []
        self.threshold: float | None = None
        self.fail = fail

    @property
    def ready(self) -> bool:
        return self.threshold is not None

    def keep(self, epoch, marker, trial_id, flags):
        if marker.get("block") != "calibration":
            return None
        self.kept.append(float(epoch.data.mean()))
        return {"n_kept": len(self.kept)}

    def n_usable(self) -> int:
        return len(self.kept)

    def can_fit(self) -> bool:
        return len(self.kept) >= 2

    def fit(self) -> dict:
        if self.fail:
            raise np.linalg.LinAlgError("singular matrix")
        self.threshold = float(np.mean(self.kept))
        return {"threshold": self.threshold}

    def __call__(self, epoch: EpochData) -> Reward:
        return Reward(float(epoch.data.mean() > self.threshold), {})


def test_calibration_parks_epochs_until_the_block_is_in_then_rescores_them():
    log = _Events()
    rescored = []
    reward = _ThresholdReward()
    gate = CalibrationGate(reward, 2, lambda msg, arrays: rescored.append(msg.trial_id), log)

    msg, arrays = _epoch(10, {"block": "closed_loop"})
    parked = gate.intercept(msg, arrays, epoch_of(msg, arrays))
    assert parked.reason == "waiting for the test threshold"
    assert gate.n_parked == 1
    msg, arrays = _epoch(1, {"block": "calibration"})
    kept = gate.intercept(msg, arrays, epoch_of(msg, arrays))
    assert kept.reason.startswith("calibration epoch")
    assert not gate.fitting()
    msg, arrays = _epoch(2, {"block": "calibration"})
    gate.intercept(msg, arrays, epoch_of(msg, arrays))  # the block is in: the fit starts
    gate.join(10)
    assert reward.ready
    assert rescored == [10]
    assert gate.n_parked == 0
    assert log.named("decoder_fitted") == [{"threshold": reward.threshold}]
    assert gate.intercept(msg, arrays, epoch_of(msg, arrays)) is None  # now: score it


def test_a_failed_fit_is_logged_and_the_epochs_stay_parked():
    log = _Events()
    gate = CalibrationGate(_ThresholdReward(fail=True), 2, lambda *a: None, log)
    for trial, block in [(1, "calibration"), (2, "closed_loop"), (3, "calibration")]:
        msg, arrays = _epoch(trial, {"block": block})
        gate.intercept(msg, arrays, epoch_of(msg, arrays))
    gate.join(10)
    assert log.named("decoder_fit_failed")[0]["error"].startswith("LinAlgError")
    assert gate.n_parked == 1


# -- rounds and provenance ------------------------------------------------------------------
def test_the_scheduler_runs_rounds_on_a_procedural_backend(protocol, backend, pool):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    ledger = RewardLedger(_Events())
    rounds = RoundScheduler(
        g,
        generator,
        lambda: ledger.drain(generator, backend.embed),
        ledger.trials_scored,
        lambda: False,
        _Events(),
    )
    try:
        request = ImageRequest(session="s", block="closed_loop", round=0, n_images=4)
        assert rounds.start(request, [b"id", b""]) is None
        busy = rounds.start(request, [b"other", b""])
        assert isinstance(busy, ErrorReply)
        assert busy.error == "busy"
        job, missed = _due(rounds.poll)
        assert not missed
        assert job.error is None
        assert job.envelope == [b"id", b""]
        assert len(job.ready) == 4
        assert rounds.job is None
        batch = assemble_batch(job, missed, backend, g)
        assert isinstance(batch.message, ImageBatch)
        assert [i.image_id[:5] for i in batch.message.images] == ["r00-i"] * 4
        assert len(batch.arrays) == 4
        assert batch.arrays[0].dtype == np.uint8
    finally:
        rounds.close()


def _credit(ledger: RewardLedger, n: int, first_trial: int = 1) -> None:
    for k in range(n):
        trial = first_trial + k
        embedding = _issue(ledger, f"img-{trial}")
        ledger.credit(trial, f"img-{trial}", embedding, None, float(np.sin(trial)) / 2 + 0.5)


def test_idle_time_fits_the_gp_once_the_calibration_is_in_and_no_round_fits_it(
    protocol, backend, pool
):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    log, ledger = _Events(), RewardLedger(_Events())
    calibrated = [False]
    rounds = RoundScheduler(
        g, generator, lambda: ledger.drain(generator, backend.embed), ledger.trials_scored,
        lambda: False, log, pending=ledger.n_pending, calibrated=lambda: calibrated[0],
    )  # fmt: skip
    try:
        _credit(ledger, 6)
        rounds.maybe_refit()  # calibration still running: the rewards are only taken in
        rounds.join_idle(60)
        assert (generator.n_observations, ledger.n_pending()) == (6, 0)
        assert not generator.gp.fitted
        rounds.maybe_refit()
        rounds.join_idle(60)
        assert not generator.gp.fitted
        assert not log.named("gp_refit")

        calibrated[0] = True  # the calibration observations are in: the first fit, at once
        rounds.maybe_refit()
        rounds.join_idle(60)
        (fit,) = log.named("gp_refit")
        assert fit["first_fit"]
        assert not fit["yielded"]
        assert fit["iters"] == g.gp.fit_iters
        assert fit["n_points"] == 6

        for r in (0, 1):  # neither round fits: round 1 only adds round 0's rewards
            _credit(ledger, 2, first_trial=10 + r * 2)
            iters = generator.gp.n_fit_iters
            rounds.start(ImageRequest(session="s", block="closed_loop", round=r, n_images=4), [])
            job, missed = _due(rounds.poll)
            assert job.error is None
            assert not missed
            assert generator.gp.n_fit_iters == iters
        assert generator.gp.n == 10
    finally:
        rounds.close()


def test_the_first_fit_has_every_calibration_reward_even_those_credited_during_a_drain(
    protocol, backend, pool
):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    log, ledger = _Events(), RewardLedger(_Events())
    settled = [False]

    def drain() -> None:  # the fit thread scores its last epochs and ends meanwhile
        ledger.drain(generator, backend.embed)
        if not settled[0]:
            _credit(ledger, 3, first_trial=100)
            settled[0] = True

    rounds = RoundScheduler(
        g, generator, drain, ledger.trials_scored, lambda: False, log,
        pending=ledger.n_pending, calibrated=lambda: settled[0],
    )  # fmt: skip
    try:
        _credit(ledger, 6)
        for _ in range(2):
            rounds.maybe_refit()
            rounds.join_idle(60)
        (fit,) = log.named("gp_refit")
        assert fit["first_fit"]
        assert fit["n_points"] == 9  # not the 6 drained before the gate settled
    finally:
        rounds.close()


def test_a_first_fit_in_idle_time_yields_to_a_request_and_owes_the_rest(tmp_path, backend, pool):
    path = tmp_path / "slow.toml"
    path.write_text(
        _PROTOCOL.replace("fit_iters = 10", "fit_iters = 1000000\nrefit_budget_s = 600.0")
    )
    g = load_protocol(path).generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    log, ledger = _Events(), RewardLedger(_Events())
    rounds = RoundScheduler(
        g, generator, lambda: ledger.drain(generator, backend.embed), ledger.trials_scored,
        lambda: False, log, pending=ledger.n_pending,
    )  # fmt: skip
    try:
        _credit(ledger, 8)
        rounds.maybe_refit()  # a first fit of a million iterations: minutes of work
        wait_until(lambda: generator.gp.n_fit_iters > 0, 60)
        t0 = time.monotonic()
        rounds.start(ImageRequest(session="s", block="closed_loop", round=0, n_images=4), [])
        job, _ = _due(rounds.poll)
        assert job.error is None
        assert time.monotonic() - t0 < 30  # the fit made way at its next iteration
        rounds.join_idle(10)
        (fit,) = log.named("gp_refit")
        assert fit["first_fit"]
        assert fit["yielded"]
        assert 0 < fit["iters"] < g.gp.fit_iters
        assert fit["owed_iters"] == generator.fit_iters_owed == g.gp.fit_iters - fit["iters"]
        assert generator.gp.fitted  # usable as far as it got
    finally:
        rounds.close()


def test_provenance_is_written_beside_the_session_and_logged(protocol, backend, pool, tmp_path):
    g = protocol.generation
    generator = HeuristicGenerator(g.heuristic, g.gp, backend, pool, 0)
    rounds = RoundScheduler(g, generator, lambda: None, set(), lambda: False, _Events())
    request = ImageRequest(session="s", block="closed_loop", round=0, n_images=3)
    rounds.start(request, [])
    batch = assemble_batch(*_due(rounds.poll), backend, g)
    rounds.close()

    store = SessionStore(tmp_path / "s").open(role="generation")
    assert ProvenanceWriter(store, store.log).write(batch, generator)
    store.close()
    for info in batch.message.images:
        path = tmp_path / "s" / info.provenance["embedding"]
        assert path.parent.name == "round-00"
        assert path.parent.parent.name == GENERATION_DIR
        assert load_file(str(path))["embedding"].shape == (backend.embed_dim,)
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar == {"image_id": info.image_id, **info.provenance}
    (logged,) = events_named(tmp_path / "s", "image_batch")
    assert logged["image_ids"] == [i.image_id for i in batch.message.images]


def test_the_calibration_is_in_once_the_session_fitted_reward_has_scored_what_waited(
    protocol, backend, pool
):
    service = GenerationService(protocol, backend, pool, _ThresholdReward())
    service.calibration.n_calibration = 2  # as a protocol with two calibration trials
    service.calibration.loop_started = True  # round 0 asked for: still not the GP's turn
    try:
        assert not service.calibrated()
        for trial, block in [(1, "calibration"), (2, "closed_loop"), (3, "calibration")]:
            service.score_epoch(*_epoch(trial, {"block": block}))
            assert not service.calibrated() or service.calibration.settled
        service.calibration.join(30)
        assert service.calibration.settled
        assert service.calibrated()
    finally:
        service.close()


def test_the_calibration_is_over_with_a_later_block_not_with_round_0_asked_ahead(
    tmp_path, backend, pool
):
    # a validation block before the calibration: its epochs do not end the calibration
    path = tmp_path / "protocol.toml"
    path.write_text(
        _PROTOCOL
        + "".join(
            f'[[presentation.blocks]]\nkind = "{kind}"\nn_trials = 3\nsource = "{source}"\n'
            for kind, source in [
                ("validation", "folder"),
                ("calibration", "folder"),
                ("closed_loop", "generator"),
            ]
        )
    )
    service = GenerationService(load_protocol(path), backend, pool, _ThresholdReward())
    gate = service.calibration
    try:
        assert (gate.n_calibration, gate.later_blocks) == (3, frozenset({"closed_loop"}))
        # round 0, asked for while the calibration runs: its last ratings are still to come
        ahead = ImageRequest(session="s", block="closed_loop", round=0, n_images=2)
        assert service.start_request(ahead, []) is None
        service.score_epoch(*_epoch(1, {"block": "validation"}))
        for trial in (2, 3):  # one calibration trial short: its epoch was lost
            service.score_epoch(*_epoch(trial, {"block": "calibration"}))
        service.maybe_fit_decoder()
        assert not gate.loop_started
        assert not gate.fitting()
        # the loop's first epoch: the calibration is over, fitted on what it has
        service.score_epoch(*_epoch(5, {"block": "closed_loop"}))
        assert gate.loop_started
        service.maybe_fit_decoder()
        gate.join(30)
        assert gate.settled
        kept = [float(_epoch(t, {})[1][0].mean()) for t in (2, 3)]
        assert gate.reward.kept == pytest.approx(kept)  # the calibration's epochs only
    finally:
        service.close()


def test_a_training_free_reward_is_calibrated_once_its_block_or_round_0_is_rewarded(
    protocol, backend, pool
):
    service = GenerationService(protocol, backend, pool, _reward())
    gate = service.calibration
    try:
        gate.n_calibration = 0  # no calibration block: round 0's 4 images (initial_images)
        _credit(service.ledger, 3)
        assert not service.calibrated()
        _credit(service.ledger, 1, first_trial=4)
        assert service.calibrated()
        gate.n_calibration = 6  # a calibration block of 6: all its rewards, or the loop
        assert not service.calibrated()
        gate.loop_started = True
        assert service.calibrated()
    finally:
        service.close()


def test_a_worker_that_took_over_a_session_fits_its_gp_before_it_serves(protocol, backend, pool):
    service = GenerationService(protocol, backend, pool, _reward())
    service.calibration.n_calibration = 4  # a calibration block of 4, done before the crash
    try:
        _credit(service.ledger, 6)  # what restore() credits from the session's events
        prepared = service.prepare()
        assert set(prepared) == {"gp_warmup_s", "gp_fit_s"}
        assert service.generator.n_observations == 6
        assert service.generator.gp.fitted
        assert service.generator.gp.n_fit_iters == protocol.generation.gp.fit_iters
    finally:
        service.close()


# -- faults contained -------------------------------------------------------------------------
class _BrokenReward:
    """A reward function with a bug: an error no reward is expected to raise."""

    def __call__(self, epoch: EpochData) -> Reward:
        raise KeyError("a bug in the reward")


class _FlakyBackend(ProceduralBackend):
    """The procedural backend, whose embedding fails while ``broken`` (a CUDA OOM, say)."""

    broken = False

    def embed(self, images):
        if self.broken:
            raise RuntimeError("CUDA out of memory")
        return super().embed(images)


def test_a_fault_in_scoring_is_an_error_reply_and_the_service_goes_on(protocol, backend, pool):
    service = GenerationService(protocol, backend, pool, _BrokenReward())
    try:
        msg, arrays = _epoch(1, {})
        reply, _ = decode(service.score_epoch(msg, arrays))
        assert isinstance(reply, ErrorReply)
        assert reply.error == "internal"
        assert "KeyError" in reply.detail
        assert 1 in service.trials_scored
        assert service.n_observations == 0
        status, _ = decode(service.handle(encode(StatusRequest())))
        assert isinstance(status, StatusReply)
    finally:
        service.close()


def test_a_failing_backend_fails_its_round_only(protocol, pool, tmp_path):
    backend = _FlakyBackend(size=64, fit_samples=64, seed=0)
    service = GenerationService(protocol, backend, pool, _reward())
    image = tmp_path / "shown.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    service.credit(1, "shown", None, str(image), 0.9)
    try:
        backend.broken = True
        request = ImageRequest(session="s", block="closed_loop", round=0, n_images=4)
        assert service.start_request(request, []) is None
        _, frames = _due(service.poll_job)
        failed, _ = decode(frames)
        assert isinstance(failed, ErrorReply)
        assert failed.error == "generation_failed"
        assert "out of memory" in failed.detail
        backend.broken = False
        assert service.start_request(request, []) is None  # the next request is served
        _, frames = _due(service.poll_job)
        batch, _ = decode(frames)
        assert isinstance(batch, ImageBatch)
        assert len(batch.images) == 4
        assert service.generator.ids == ["shown"]  # the reward waited for the next round
    finally:
        service.close()


def test_a_failed_fit_check_is_logged_once_and_the_loop_goes_on(protocol, backend, pool, tmp_path):
    class _CannotTell(_ThresholdReward):
        def can_fit(self) -> bool:
            raise ZeroDivisionError("no trials")

    store = SessionStore(tmp_path / "s").open(role="generation")
    service = GenerationService(protocol, backend, pool, _CannotTell(), store)
    service.calibration.loop_started = True
    try:
        for _ in range(3):
            service.maybe_fit_decoder()  # called on every pass of the loop
        (failed,) = events_named(tmp_path / "s", "generation_part_failed")
        assert failed["part"] == "calibration"
        assert failed["error"].startswith("ZeroDivision")
    finally:
        service.close()
        store.close()


def test_the_serve_loop_survives_a_provenance_write_that_fails(protocol, backend, pool, tmp_path):
    root = tmp_path / "s"
    store = SessionStore(root).open(role="generation")
    (root / GENERATION_DIR).write_text("not a folder")  # every embedding write fails
    service = GenerationService(protocol, backend, pool, _reward(), store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    router, _ = transport.bind(zmq.Context.instance(), zmq.ROUTER, endpoint)
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(router, None, stop.is_set), daemon=True)
    thread.start()
    client = GenerationClient(endpoint)
    try:
        for round_ in (0, 1):
            req = ImageRequest(session="s", block="closed_loop", round=round_, n_images=4)
            batch, _ = client.request(req, timeout_s=60)
            assert isinstance(batch, ImageBatch), batch
        status, _ = client.request(StatusRequest(), timeout_s=10)
        assert isinstance(status, StatusReply)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        client.close()
        router.close(0)
        store.close()
    failed = [e for e in read_events(root / "events.jsonl") if e["event"] == "provenance_failed"]
    assert [e["round"] for e in failed] == [0, 1]
    assert {e["what"] for e in failed} == {"files"}
    assert len(events_named(root, "image_batch")) == 2  # the round counter is still kept
