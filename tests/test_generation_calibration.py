"""The worker fits the affective decoder on the session's calibration epochs, then rewards."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import Processes
from helpers import events_named, wait_until

from models.decoders.classifiers import load_classifier
from workers.generation.personal_fit import DECODER_FILE
from workers.generation.service import GenerationClient
from workers.messages import (
    EpochMessage,
    ImageBatch,
    ImageRequest,
    RewardReply,
    StatusReply,
    StatusRequest,
)

pytestmark = pytest.mark.timeout(240)

_PROTOCOL = """
[generation]
session = "s"  # the session name these tests send
max_request_bytes = 65536
deadline_s = 60.0
reward_wait_s = 0.0
[generation.reward]
mode = "affective"
decoder = "calibration"
target_class = "amusement"
[generation.procedural]
size = 64
pool_size = 48
fit_samples = 256
[generation.heuristic]
inner_steps = 1
[decoder]
classifier = "atms_fc"
threads = 1
[decoder.atms_fc]
epochs = 40
"""

CH = ["Pz", "Oz", "Cz"]


def _epoch(trial: int, marker: dict, amused: bool) -> tuple[EpochMessage, np.ndarray]:
    """An epoch whose 0.3-0.7 s window carries a class-specific deflection."""
    rng = np.random.default_rng(trial)
    t = -0.2 + np.arange(301) / 250.0
    x = rng.normal(0, 1.0, (3, 301)).astype(np.float32)
    x[:, (t >= 0.3) & (t <= 0.7)] += 6.0 if amused else -6.0
    msg = EpochMessage.of(
        x,
        session="s",
        trial_id=trial,
        marker={"event": "stimulus_onset", "trial": trial, **marker},
        ch_names=CH,
        sfreq=250.0,
        tmin=-0.2,
    )
    return msg, x


_BLOCKS = """
[[presentation.blocks]]
kind = "calibration"
n_trials = 16
[[presentation.blocks]]
kind = "closed_loop"
source = "generator"
n_trials = 4
"""


@pytest.mark.parametrize("trigger", ["first_loop_epoch", "calibration_complete"])
def test_calibration_decoder_is_fitted_then_rewards(tmp_path, free_port, trigger):
    # the protocol's calibration block has 40 trials by default (only 16 come: the fit
    # waits for the loop's first epoch), or exactly the 16 that come (fitted at once)
    protocol = tmp_path / "protocol.toml"
    protocol.write_text(_PROTOCOL + (_BLOCKS if trigger == "calibration_complete" else ""))
    session = tmp_path / "session"
    endpoint = f"tcp://127.0.0.1:{free_port}"
    procs = Processes()
    try:
        procs.eegs(
            "worker", "--protocol", str(protocol), "--session", str(session),
            "--endpoint", endpoint,
        )  # fmt: skip
        client = GenerationClient(endpoint)
        status, _ = client.request(StatusRequest(), timeout_s=120)
        assert isinstance(status, StatusReply)
        # calibration block: labelled epochs are kept, not rewarded
        for trial in range(16):
            amused = trial % 2 == 0
            label = "amusement" if amused else "sadness"
            msg, x = _epoch(trial, {"block": "calibration", "label": label}, amused)
            reply, _ = client.request(msg, (x,), timeout_s=30)
            assert isinstance(reply, RewardReply)
            assert not reply.used
            assert "calibration" in reply.reason
        if trigger == "first_loop_epoch":
            time.sleep(1.0)
            assert not (session / DECODER_FILE).exists()  # no fit before the loop starts
        else:  # fitted as soon as the calibration block is complete
            wait_until(lambda: events_named(session, "decoder_fitted"), timeout=120)
            assert not events_named(session, "image_request")
        batch, _ = client.request(
            ImageRequest(session="s", block="closed_loop", round=0, n_images=4), timeout_s=60
        )
        assert isinstance(batch, ImageBatch)
        if trigger == "first_loop_epoch":  # round 0 is asked for ahead, during calibration
            time.sleep(0.5)
            assert not (session / DECODER_FILE).exists()
        # an epoch of the first round before the decoder is ready waits for it (if any)
        first = batch.images[0].image_id
        msg, x = _epoch(100, {"block": "closed_loop", "image": f"/x/{first}.png"}, True)
        client.request(msg, (x,), timeout_s=30)
        wait_until(lambda: events_named(session, "decoder_fitted"), timeout=120)
        fitted = events_named(session, "decoder_fitted")[0]
        assert fitted["n_epochs"] == 16
        assert fitted["per_class"] == {"sadness": 8, "amusement": 8}
        wait_until(lambda: any(e["trial_id"] == 100 for e in events_named(session, "reward")))
        parked = next(e for e in events_named(session, "reward") if e["trial_id"] == 100)
        assert parked["used"]
        assert parked["image_id"] == first
        # from now on each epoch is rewarded with P(amusement), from the saved decoder
        clf = load_classifier(session / DECODER_FILE)
        rewards = {}
        for trial, amused in ((101, True), (102, False)):
            image = batch.images[trial - 100].image_id
            msg, x = _epoch(trial, {"block": "closed_loop", "image": f"/x/{image}.png"}, amused)
            reply, _ = client.request(msg, (x,), timeout_s=30)
            assert reply.used
            expected = clf.predict_proba(x[None, :, 50:300])[0, 1]
            assert reply.reward == pytest.approx(float(expected), abs=1e-5)
            rewards[amused] = reply.reward
        assert rewards[True] > 0.5 > rewards[False]
        client.close()
    finally:
        procs.stop_all()
