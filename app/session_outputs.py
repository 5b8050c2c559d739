"""What a session leaves for people: the image dataset, ``summary.json``, ``report.html``.

Everything here is derived from the session directory alone (``events.jsonl``, the
epochs, the images and their sidecars), so it can be rebuilt for any session, also
an interrupted one, with ``eegs summarize SESSION``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from app.loop_gains import loop_gains
from app.report import write_report
from app.restarts import summarize_losses
from app.session_trials import Trial, by_image, collect_trials, mean_reward
from experiment_protocols import Protocol
from workers.session_store import SessionStore, atomic_write_json

DATASET_DIR = "dataset"


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3)}


def _by_round(trials: list[Trial], value) -> list[float | None]:
    rounds = defaultdict(list)
    for t in trials:
        v = value(t)
        if v is not None:
            rounds[t.round].append(v)
    n = max((t.round for t in trials), default=-1) + 1
    return [round(float(np.mean(rounds[r])), 4) if rounds[r] else None for r in range(n)]


def _round_ready_latency(events: list[dict], loop: list[Trial]) -> list[float]:
    """Per round r >= 1: last epoch of round r-1 -> batch r received by the presentation.

    Received: the presentation's ``image_batch`` (the one that names its block), logged
    as the batch is in memory, before its files are written.
    """
    epoch_t = {e["trial_id"]: e["t_wall"] for e in events if e["event"] == "epoch"}
    batch_t: dict[tuple[str, int], float] = {}
    for e in events:  # the first receipt (a resumed session's events hold both runs)
        if e["event"] == "image_batch" and "block" in e:
            batch_t.setdefault((e["block"], e["round"]), e["t_wall"])
    out = []
    for block, r in sorted({(t.block, t.round) for t in loop}):
        prev = [t.trial for t in loop if (t.block, t.round) == (block, r - 1)]
        if r == 0 or (block, r) not in batch_t or not prev or max(prev) not in epoch_t:
            continue
        out.append((batch_t[block, r] - epoch_t[max(prev)]) * 1e3)
    return out


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _corr(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 3)


def ratings_summary(trials: list[Trial], protocol: Protocol) -> dict[str, Any] | None:
    """The participant's self-report: counts and mean ratings per block and per label.

    None when no trial was rated.
    """
    rated = [t for t in trials if t.rated("valence") is not None or t.rated("arousal") is not None]
    if not rated:
        return None
    r = protocol.presentation.ratings
    out: dict[str, Any] = {"scale": [r.low, r.high], "n_rated": len(rated), "by_block": {}}
    for block in dict.fromkeys(t.block for t in rated):
        ts = [t for t in rated if t.block == block]
        row: dict[str, Any] = {"n": len(ts)}
        for scale in ("valence", "arousal"):
            values = [v for t in ts if (v := t.rated(scale)) is not None]
            row[f"{scale}_mean"] = _mean(values)
        labels = sorted({t.label for t in ts if t.label})
        if labels:  # labelled images: the participant's valence against the set's labels
            row["valence_mean_by_label"] = {
                label: _mean(
                    [v for t in ts if t.label == label and (v := t.rated("valence")) is not None]
                )
                for label in labels
            }
        out["by_block"][block] = row
    return out


def _r_with_ci(x: list[float], y: list[float]) -> dict[str, Any]:
    """Pearson r of paired values with its 95 % CI (Fisher z) and n."""
    from models.rewards.personal import fisher_ci

    r = _corr(x, y)
    ci = None if r is None else [round(v, 4) for v in fisher_ci(r, len(x))]
    return {"n": len(x), "r": None if r is None else round(r, 4), "ci95": ci}


def estimator_vs_ratings(trials: list[Trial]) -> dict[str, Any] | None:
    """Poster Fig. 3b: the estimator's predicted valence vs the participant's own rating.

    On the validation block, which the estimator was never fitted on.
    """
    pairs = [
        (float(t.reward_details["predicted_valence"]), v)
        for t in trials
        if t.block == "validation"
        and (v := t.rated("valence")) is not None
        and isinstance(t.reward_details.get("predicted_valence"), int | float)
    ]
    if not pairs:
        return None
    out = _r_with_ci([p for p, _ in pairs], [v for _, v in pairs])
    out["pairs"] = [[round(p, 3), v] for p, v in pairs]
    return out


def semantic_similarity(session: Path, loop: list[Trial]) -> dict[str, Any] | None:
    """Poster Fig. 3a: an image's semantic similarity to the best-rated ones vs its reward.

    Per closed-loop image: the cosine of its embedding (the backend's semantic space) to
    the mean embedding of the top quarter of rewarded images, itself left out; correlated
    with its reward over the session.
    """
    from safetensors.numpy import load_file

    rows = []
    for shown in by_image(loop).values():
        rel = shown[0].provenance.get("embedding")
        path = session / rel if isinstance(rel, str) else None
        if path is None or not path.is_file():
            continue
        try:
            e = load_file(str(path))["embedding"].astype(np.float64)
        except (OSError, KeyError, ValueError):
            continue
        rows.append((mean_reward(shown), e / max(np.linalg.norm(e), 1e-12)))
    if len(rows) < 8:
        return None
    rewards = np.asarray([r for r, _ in rows])
    E = np.stack([e for _, e in rows])
    top = np.argsort(-rewards)[: max(2, len(rows) // 4)]
    sims = []
    for i in range(len(rows)):
        ref = E[[j for j in top if j != i]].mean(0)
        sims.append(float(E[i] @ ref / max(np.linalg.norm(ref), 1e-12)))
    out = _r_with_ci(sims, rewards.tolist())
    out["pairs"] = [[round(a, 4), round(b, 4)] for a, b in zip(sims, rewards, strict=True)]
    return out


def build_summary(session: Path, protocol: Protocol, pilot: bool) -> dict[str, Any]:
    """The figures of a session (``summary.json``)."""
    trials, events = collect_trials(session)
    loop = [t for t in trials if t.block == "closed_loop"]
    epochs = [e for e in events if e["event"] == "epoch"]
    ready = next((e for e in events if e["event"] == "generation_ready"), {})
    info = SessionStore(session).read_info()
    summary: dict[str, Any] = {
        "reward_mode": protocol.generation.reward.mode,
        "reward_by_round": _by_round(loop, lambda t: t.reward),
        "best_reward_by_round": [
            max((t.reward for t in loop if t.round == r and t.reward is not None), default=None)
            for r in sorted({t.round for t in loop})
        ],
        "n_trials": len(trials),
        "n_epochs": len(epochs),
        "n_epochs_bad": sum(1 for e in epochs if e["bad"]),
        "n_epochs_lost": sum(1 for e in events if e["event"] == "epoch_lost"),
        "epoch_latency_ms": _stats([e["latency_ms"] for e in epochs]),
        "round_ready_latency_ms": _stats(_round_ready_latency(events, loop)),
        "dropped_frames": sum(t.dropped_frames for t in trials),
        # trials whose image was not there when the fixation ended (the participant waited)
        "image_late": sum(1 for e in events if e["event"] == "image_late"),
        "backend": ready.get("backend"),
        "protocol_sha256": info.get("protocol_sha256") or protocol.sha256,
        "resumed": sum(1 for e in events if e["event"] == "session_resumed"),
        **summarize_losses(events),  # restarts and trials lost (app/restarts.py)
    }
    ratings = ratings_summary(trials, protocol)
    if ratings is not None:
        summary["ratings"] = ratings
    fitted = next((e for e in events if e["event"] == "decoder_fitted"), None)
    if fitted is not None:  # the affective reward's decoder, fitted on the calibration block
        summary["calibration_decoder"] = {
            k: v for k, v in fitted.items() if k not in ("t_wall", "event")
        }
    fig3b = estimator_vs_ratings(trials)
    if fig3b is not None:
        summary["estimator_vs_ratings"] = fig3b
    fig3a = semantic_similarity(session, loop)
    if fig3a is not None:
        summary["semantic_similarity"] = fig3a
    personal = next((e for e in events if e["event"] == "personal_estimator"), None)
    if personal is not None:  # the personal reward: decodes or fell back, and its CV figures
        summary["personal_estimator"] = {
            k: v for k, v in personal.items() if k not in ("t_wall", "event")
        }
    if pilot:
        from models.brain.response import BrainModel

        model = BrainModel(protocol.brain_model.subject_seed)
        affect = {t.trial: model.affect(t.image) for t in trials if t.image.exists()}
        key = 0 if protocol.generation.reward.oracle == "valence" else 1
        summary["oracle_target"] = protocol.generation.reward.oracle
        summary["oracle_affect_by_round"] = _by_round(
            loop, lambda t: affect[t.trial][key] if t.trial in affect else None
        )
        summary["oracle_valence_by_round"] = _by_round(
            loop, lambda t: affect[t.trial][0] if t.trial in affect else None
        )
        summary["oracle_arousal_by_round"] = _by_round(
            loop, lambda t: affect[t.trial][1] if t.trial in affect else None
        )
        seen = [t for t in loop if t.trial in affect]
        if seen:  # the loop bench's gains (a) and (b), for this one participant
            summary["oracle_valence_gains"] = loop_gains(
                np.asarray([affect[t.trial][0] for t in seen]),
                np.asarray([t.round for t in seen]),
                [t.provenance.get("kind", "") for t in seen],
            )
        if ratings is not None:  # does the simulated participant rate as it feels?
            pairs = {
                scale: [
                    (v, affect[t.trial][k])
                    for t in trials
                    if (v := t.rated(scale)) is not None and t.trial in affect
                ]
                for k, scale in enumerate(("valence", "arousal"))
            }
            ratings["oracle_correlation"] = {
                scale: _corr([a for a, _ in xy], [b for _, b in xy]) for scale, xy in pairs.items()
            }
        summary["oracle_note"] = (
            "the brain model's hidden affect of the shown images, read after the session "
            "for evaluation only; the loop never saw it"
        )
        summary["pilot_note"] = pilot_note(protocol)
    return summary


def pilot_note(protocol: Protocol) -> str:
    """How one pilot's figures relate to a lab session's (README: pilots that predict one)."""
    from experiment_protocols import PROTOCOL_DIR, load_protocol
    from experiment_protocols.brain_model import REALISM_LEVELS
    from experiment_protocols.participant_time import participant_minutes

    level = protocol.brain_model.realism
    blocks = {b.kind: b for b in protocol.presentation.blocks}
    calib = blocks["calibration"].n_trials if "calibration" in blocks else 0
    loop = blocks.get("closed_loop")
    shape = f"{loop.n_rounds} closed-loop rounds of {loop.n_trials} images" if loop else "no loop"
    lab = load_protocol(PROTOCOL_DIR / "default.toml")
    lab_blocks = {b.kind: b for b in lab.presentation.blocks}
    return (
        f"one simulated participant ({protocol.brain_model.family} family) at brain_model."
        f"realism = {level!r} ({REALISM_LEVELS[level]}), {calib} rated calibration trials "
        f"and {shape} (about {participant_minutes(protocol):.0f} min of a person's time): "
        "its gains are one draw of a population. The lab protocol (default.toml: "
        f"{lab_blocks['calibration'].n_trials} rated calibration trials, "
        f"{lab_blocks['closed_loop'].n_rounds} rounds, about "
        f"{participant_minutes(lab):.0f} min) and what a lab session can expect from it (the "
        "population's gains by session length, calibration size and realism) are measured "
        "by `eegs bench loop` (README, 'Pilots that predict a session')."
    )


def export_dataset(session: Path, protocol: Protocol) -> Path:
    """The images the brain rated, as an imagefolder dataset with ``metadata.jsonl``.

    Every closed-loop image with a reward from a clean epoch goes in. Its class is
    ``high_<target>`` when its reward is at or above the median reward of those images,
    else ``low_<target>`` (target: ``generation.reward.chases``: the protocol's
    ``target_class`` for the decoder and asymmetry rewards, ``arousal`` for the LPP,
    ``target`` for the semantic reward); the reward,
    decoder probabilities, round, parents and self-report ratings are kept beside it
    (``valence_rating`` / ``arousal_rating``: the participant's answers where the image
    was rated, else null; ``ratings``: the whole answer, with reaction times and input).
    An image shown several times (a block's ``presentations``) goes in once, with the
    mean of its trials' rewards (``trial_rewards``, ``trials``); the rest is its first
    trial's.
    """
    trials, _ = collect_trials(session)
    shown = by_image(
        [t for t in trials if t.block == "closed_loop" and not t.bad and t.image.exists()]
    )
    reward = {image: mean_reward(ts) for image, ts in shown.items()}
    mode = protocol.generation.reward.mode
    target = protocol.generation.reward.chases
    out = session / DATASET_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    median = float(np.median(list(reward.values()))) if reward else 0.0
    lines = []
    for image in sorted(shown, key=lambda image: -reward[image]):
        t = shown[image][0]
        label = f"{'high' if reward[image] >= median else 'low'}_{target}"
        dest = out / label / f"trial-{t.trial:05d}{t.image.suffix}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy2(t.image, dest)
        lines.append(
            {
                "file_name": str(dest.relative_to(out)),
                "label": label,
                "reward": reward[image],
                "trial_rewards": [s.reward for s in shown[image]],
                "trials": [s.trial for s in shown[image]],
                "reward_mode": mode,
                "decoder_probabilities": t.reward_details.get("proba"),
                "reward_details": t.reward_details,
                "round": t.round,
                "trial": t.trial,
                "parents": t.provenance.get("parents", []),
                "kind": t.provenance.get("kind"),
                "backend": t.provenance.get("backend"),
                "valence_rating": t.rated("valence"),
                "arousal_rating": t.rated("arousal"),
                "ratings": t.rating,
                "source_image": str(t.image),
            }
        )
    (out / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def write_outputs(session: Path, protocol: Protocol, pilot: bool) -> dict[str, Any]:
    """Write the dataset, ``summary.json`` and ``report.html`` of a session."""
    export_dataset(session, protocol)
    summary = build_summary(session, protocol, pilot)
    atomic_write_json(session / "summary.json", summary)
    write_report(session, protocol, summary)
    return summary
