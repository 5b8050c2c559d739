"""The closed loop end to end: `eegs pilot` (by `eegs bench pilots`) and `eegs run`, as started."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import pyxdf
from conftest import EEGLAB_SET, REPO, run_eegs
from helpers import short_pilot_protocol

from experiment_protocols import load_protocol
from workers.session_store import SessionStore

pytestmark = pytest.mark.timeout(900)


def test_pilot_two_rounds_end_to_end(tmp_path):
    """A real pilot, started by `eegs bench pilots` (its command line), and the bench's row of it.

    One pilot serves both: the session's every output, and the bench's summary of its gains.
    """
    pilots = tmp_path / "pilots"
    res = run_eegs(
        "bench", "pilots", "--seeds", "1", "--first-seed", "3", "--rounds", "2",
        "--reward", "affective", "--protocol", str(short_pilot_protocol(tmp_path)),
        "--dir", str(pilots), timeout=840,
    )  # fmt: skip
    out = pilots / "seed-3"
    _bench_row_is_the_sessions(res, out)
    info = json.loads((out / "session.json").read_text())
    assert info["status"] == "completed"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["reward_by_round"]) == 2
    assert len(summary["oracle_affect_by_round"]) == 2
    assert summary["backend"] == "procedural"
    # the affective reward's decoder was fitted on the calibration block's epochs
    assert summary["reward_mode"] == "affective"
    assert summary["oracle_target"] == "valence"
    assert "realism = 'lab'" in summary["pilot_note"]  # the default: a person's signal
    assert "min of a person's time" in summary["pilot_note"]  # and the lab protocol's
    assert summary["calibration_decoder"]["n_epochs"] >= 7  # 8 shown; the last may be late
    assert (out / "decoder" / "calibration.safetensors").exists()
    assert summary["n_trials"] == 8 + 2 * 8 + 4
    assert summary["n_epochs"] == summary["n_trials"]  # one epoch per trial, none lost
    assert summary["n_epochs_lost"] == 0
    assert summary["epoch_latency_ms"]["p95"] < 200
    # negative when the next batch is ready before the round's last epoch (asked for early)
    assert np.isfinite(summary["round_ready_latency_ms"]["median"])
    assert summary["protocol_sha256"] == info["protocol_sha256"]
    # every trial's epoch is stored, and rewarded
    trials = {e["trial"] for e in SessionStore(out).events() if e["event"] == "trial"}
    assert {e.trial_id for e in SessionStore(out).epochs()} == trials
    events = list(SessionStore(out).events())
    rewarded = {e["trial_id"] for e in events if e["event"] == "reward"}
    kept = {e["trial_id"] for e in events if e["event"] == "calibration_epoch"}
    assert len(kept) >= 7
    assert trials <= rewarded | kept  # calibration epochs train the decoder instead
    # the recording holds the EEG and the presentation's markers
    streams, _ = pyxdf.load_xdf(str(out / "recording.xdf"))
    kinds = {s["info"]["type"][0] for s in streams}
    assert {"EEG", "Markers"} <= kinds
    markers = next(s for s in streams if s["info"]["type"][0] == "Markers")
    onsets = [json.loads(m[0]) for m in markers["time_series"]]
    assert sum(m["event"] == "stimulus_onset" for m in onsets) == len(trials)
    # the dataset loads as a Hugging Face imagefolder
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out / "dataset"), split="train")
    assert len(ds) == 16
    assert set(ds["label"]) <= {"high_amusement", "low_amusement"}
    assert all(r is not None for r in ds["reward"])
    assert (out / "report.html").stat().st_size > 10_000
    assert all((out / "logs" / f"{n}.log").exists() for n in ("brain-model", "acquire", "worker"))
    # the frame loop and the epoching ran at the protocol's priority where the user may
    # raise it (root here); otherwise at the priority they were started with
    for event, role in (
        ("presentation_ready", "presentation"),
        ("acquisition_ready", "acquisition"),
    ):
        (ready,) = (e for e in events if e["event"] == event)
        wanted = getattr(load_protocol(out / "protocol.toml").priority, role)
        assert ready["niceness"] == (
            wanted if os.geteuid() == 0 else os.getpriority(os.PRIO_PROCESS, 0)
        )
    (ready,) = (e for e in events if e["event"] == "presentation_ready")
    assert ready["realtime"] is (os.geteuid() == 0)  # root may take SCHED_RR


def _bench_row_is_the_sessions(res, out) -> None:
    """`eegs bench pilots`' figures are the pilot's own summary, read by the loop bench's rule."""
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout[res.stdout.index("{\n") :])
    assert figures["n"] == 1
    row = figures["per_seed"][0]
    assert "error" not in row, (out.parent / f"{out.name}.log").read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    gains = summary["oracle_valence_gains"]
    # the summary's gains are the loop bench's, over the oracle's valence by round
    assert gains["curve"] == pytest.approx(summary["oracle_valence_by_round"], abs=1e-4)
    curve = gains["curve"]
    assert gains["gain_a"] == pytest.approx(np.mean(curve[-2:]) - curve[0], abs=1e-3)
    assert gains["gain_b"] is not None  # the pilot shows random images beside chosen ones
    assert (row["gain_a"], row["gain_b"]) == (gains["gain_a"], gains["gain_b"])
    late = [e for e in SessionStore(out).events() if e["event"] == "image_late"]
    assert row["image_late"] == summary["image_late"] == len(late)
    assert row["round_ready_p95_ms"] == summary["round_ready_latency_ms"]["p95"]
    assert figures["gain_a_mean"] == row["gain_a"]
    assert figures["gain_b_positive"] in ("0 of 1", "1 of 1")
    assert 0 < row["minutes"] < 9


@pytest.mark.skipif(not EEGLAB_SET.exists(), reason="../shared data not present")
def test_run_with_replayed_eeg(tmp_path):
    proto = short_pilot_protocol(
        tmp_path,
        **{'mode = "personal"': 'mode = "lpp"\nchannels = ["EEG 010", "EEG 011", "EEG 012"]'},
    )
    out = tmp_path / "session"
    res = run_eegs(
        "run",
        "--protocol",
        str(proto),
        "--subject",
        "S01",
        "--out",
        str(out),
        "--source",
        f"replay:{EEGLAB_SET}",
        "--rounds",
        "1",
        "--headless",
        timeout=840,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 8 + 8 + 4
    assert summary["n_epochs"] == summary["n_trials"]
    assert "oracle_affect_by_round" not in summary  # no brain model: no oracle
    stored = SessionStore(out).epochs()
    assert stored[0].meta["ch_names"][0] == "EEG 000"
    assert len(stored[0].meta["ch_names"]) == 32


def test_run_rejects_bad_source(tmp_path):
    res = run_eegs(
        "run",
        "--protocol",
        str(REPO / "experiment_protocols" / "pilot.toml"),
        "--subject",
        "S01",
        "--source",
        "replay:/no/file.set",
    )
    assert res.returncode == 2
    assert "no such file" in res.stderr


@pytest.mark.timeout(30)
def test_progress_line_counts_reshown_trials_apart(tmp_path):
    import io

    from app.pilot import Progress

    store = SessionStore(tmp_path / "s").open(role="session")

    def show(trial: int, rnd: int) -> None:
        onset = {"event": "stimulus_onset", "block": "closed_loop", "round": rnd, "trial": trial}
        store.log("marker", marker=onset)
        store.log("trial", trial=trial)

    for t in range(8):
        show(t, 1)
    out = io.StringIO()
    progress = Progress(store, out)
    progress.update(force=True)
    assert "closed_loop round 1" in out.getvalue()
    assert "trials   8  epochs" in out.getvalue()
    store.log("trials_reshown", block="closed_loop", round=0, trials=[2, 5])
    show(8, 0)
    show(9, 0)
    progress.update(force=True)
    last = out.getvalue().splitlines()[-1]
    assert "re-show closed_loop round 0" in last
    assert "trials   8 (+2 re-shown)" in last
    store.log("marker", marker={"event": "stimulus_onset", "block": "validation", "round": 0})
    progress.update(force=True)
    assert "] validation round 0" in out.getvalue().splitlines()[-1]  # not a re-show
