"""The session report (``report.html``, an MNE Report) built from the session directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.session_trials import collect_trials
from experiment_protocols import Protocol
from workers.session_store import SessionStore


def _figure(ncols: int = 1, nrows: int = 1, size=(6, 3.5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def _curves(summary: dict[str, Any]):
    fig, ax = _figure()
    for key in ("reward_by_round", "best_reward_by_round", "oracle_affect_by_round"):
        values = summary.get(key)
        if values:
            ax[0, 0].plot(
                range(len(values)),
                [np.nan if v is None else v for v in values],
                marker="o",
                label=key,
            )
    ax[0, 0].set_xlabel("closed-loop round")
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _grid(trials, title: str):
    from PIL import Image

    n = len(trials)
    fig, axes = _figure(ncols=max(n, 1), size=(1.6 * max(n, 1), 2.0))
    for ax, t in zip(axes[0], trials, strict=False):
        ax.imshow(Image.open(t.image).convert("RGB"))
        ax.set_title(
            f"#{t.trial} r={t.reward:.2f}" if t.reward is not None else f"#{t.trial}", fontsize=7
        )
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _calibration_epochs(session: Path, trials):
    import mne

    labels = {t.trial: t.label for t in trials if t.block == "calibration" and t.label}
    stored = [e for e in SessionStore(session).epochs() if e.trial_id in labels]
    if len(stored) < 4:
        return None, None
    first = stored[0].meta
    info = mne.create_info(first["ch_names"], first["sfreq"], "eeg")
    data = np.stack([e.data for e in stored]) * 1e-6
    y = np.array([labels[e.trial_id] for e in stored])
    return mne.EpochsArray(data, info, tmin=first["tmin"], verbose="error"), y


def _calibration_accuracy(epochs, y) -> str:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 3:
        return "<p>Too few calibration epochs per class for a cross-validated accuracy.</p>"
    data = epochs.copy().crop(0.0, 1.0).get_data()
    n_bins = 10  # 100 ms means per channel: a standard ERP feature set, small enough for LDA
    bins = np.array_split(np.arange(data.shape[-1]), n_bins)
    x = np.stack([data[..., b].mean(-1) for b in bins], -1).reshape(len(y), -1)
    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    cv = StratifiedKFold(min(5, counts.min()), shuffle=True, random_state=0)
    acc = cross_val_score(clf, x, y, cv=cv, scoring="balanced_accuracy")
    return (
        f"<p>Calibration decodability ({', '.join(classes)}): shrinkage-LDA on 0-1 s "
        f"epochs (100 ms means per channel), {cv.get_n_splits()}-fold cross-validated "
        "balanced accuracy "
        f"<b>{acc.mean():.2f} ± {acc.std():.2f}</b> (chance 0.50), {len(y)} epochs.</p>"
    )


def _ratings_figure(rated, scale: tuple[int, int]):
    """Valence rating against each image's label, per rated block; both scales' histograms."""
    blocks = list(dict.fromkeys(t.block for t in rated))
    fig, ax = _figure(ncols=2, size=(9, 3.2))
    rng = np.random.default_rng(0)
    ticks, names = [], []
    for b, block in enumerate(blocks):
        ts = [t for t in rated if t.block == block and t.rated("valence") is not None]
        labels = sorted({t.label or "(none)" for t in ts})
        for k, label in enumerate(labels):
            x0 = b * (len(labels) + 1) + k
            v = [t.rated("valence") for t in ts if (t.label or "(none)") == label]
            ax[0, 0].scatter(x0 + rng.uniform(-0.15, 0.15, len(v)), v, s=12, alpha=0.6)
            ax[0, 0].hlines(np.mean(v), x0 - 0.3, x0 + 0.3, color="k")
            ticks.append(x0)
            names.append(f"{block}\n{label}")
    ax[0, 0].set_xticks(ticks, names, fontsize=7)
    ax[0, 0].set_ylim(scale[0] - 0.5, scale[1] + 0.5)
    ax[0, 0].set_ylabel("valence rating")
    ax[0, 0].set_title("valence rating vs the image's label (line: mean)", fontsize=8)
    bins = np.arange(scale[0] - 0.5, scale[1] + 1.0)
    for name in ("valence", "arousal"):
        values = [v for t in rated if (v := t.rated(name)) is not None]
        if values:
            ax[0, 1].hist(values, bins=bins, alpha=0.5, label=f"{name} (n={len(values)})")
    ax[0, 1].set_xlabel("rating")
    ax[0, 1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ratings_html(summary: dict[str, Any]) -> str:
    info = summary["ratings"]
    rows = "".join(
        f"<tr><td>{block}</td><td>{row['n']}</td><td>{row['valence_mean']}</td>"
        f"<td>{row['arousal_mean']}</td><td>{row.get('valence_mean_by_label', '')}</td></tr>"
        for block, row in info["by_block"].items()
    )
    low, high = info["scale"]
    html = (
        f"<p>The participant's own ratings ({info['n_rated']} trials, scale {low} to {high}), "
        "answered on the rating screen after each image of the rated blocks.</p>"
        "<table><tr><th>block</th><th>n</th><th>mean valence</th><th>mean arousal</th>"
        f"<th>mean valence by image label</th></tr>{rows}</table>"
    )
    corr = info.get("oracle_correlation")
    if corr:
        html += (
            "<p>Brain model only: correlation of the ratings with its hidden affect of the "
            f"same images (evaluation only): valence r = {corr.get('valence')}, arousal r = "
            f"{corr.get('arousal')}.</p>"
        )
    return html


def write_report(session: Path, protocol: Protocol, summary: dict[str, Any]) -> Path:
    """Write ``report.html``: curves, image grids, calibration ERPs, self-report, timing."""
    import matplotlib.pyplot as plt
    import mne

    trials, events = collect_trials(session)
    report = mne.Report(title=f"EEGS session {session.name}", verbose="error")
    from experiment_protocols.generation import BACKENDS

    backend = summary.get("backend") or "?"
    spec = BACKENDS.get(backend)
    note = f" ({spec.description}: stand-in images)" if spec is not None and spec.stand_in else ""
    rows = "".join(
        f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary.items() if not isinstance(v, dict)
    )
    report.add_html(f"<p>Backend: {backend}{note}</p><table>{rows}</table>", title="Summary")
    fig = _curves(summary)
    report.add_figure(fig, title="Reward and oracle affect per round")
    plt.close(fig)
    for r in sorted({t.round for t in trials if t.block == "closed_loop"}):
        shown = [t for t in trials if t.block == "closed_loop" and t.round == r]
        fig = _grid(shown, f"closed-loop round {r}")
        report.add_figure(fig, title=f"Images, round {r}", section="Images")
        plt.close(fig)
    epochs, y = _calibration_epochs(session, trials)
    if epochs is not None:
        evokeds = {label: epochs[np.flatnonzero(y == label)].average() for label in np.unique(y)}
        picks = [ch for ch in ("Pz", "Oz", "POz") if ch in epochs.ch_names] or [epochs.ch_names[0]]
        figs = mne.viz.plot_compare_evokeds(
            evokeds, picks=picks[:1], show=False, show_sensors=False
        )
        report.add_figure(figs[0], title=f"Calibration ERPs at {picks[0]}", section="EEG")
        plt.close(figs[0])
        html = _calibration_accuracy(epochs, y)
        fitted = summary.get("calibration_decoder")
        if fitted:
            kind = fitted["classifier"] + (
                " (random frozen encoder)" if fitted.get("random_encoder") else ""
            )
            html += (
                f"<p>The loop's affective decoder: {kind}, fitted by the worker on "
                f"{fitted['n_epochs']} calibration epochs {fitted['per_class']} in "
                f"{fitted['fit_s']} s; training accuracy {fitted['train_accuracy']:.2f} "
                "(not cross-validated).</p>"
            )
        report.add_html(html, title="Decoder calibration", section="EEG")
    rated = [t for t in trials if t.rated("valence") is not None or t.rated("arousal") is not None]
    if rated and summary.get("ratings"):
        r = protocol.presentation.ratings
        fig = _ratings_figure(rated, (r.low, r.high))
        report.add_figure(fig, title="Ratings of the rated blocks", section="Self-report")
        plt.close(fig)
        report.add_html(_ratings_html(summary), title="Ratings summary", section="Self-report")
    personal = summary.get("personal_estimator")
    if personal:  # the personal reward: did this participant decode, and what ran instead
        if personal.get("decodes") and not personal.get("fallback"):
            verdict = (
                "decodes above chance: the loop's reward is the estimator of the "
                "participant's own valence ratings"
            )
        elif personal.get("decodes"):
            verdict = (
                f"decodes above chance, but the '{personal.get('fallback')}' index agrees "
                f"better with the participant's ratings, so it is the loop's reward "
                f"({personal.get('reason', '')})"
            )
        else:
            verdict = (
                f"does NOT decode above chance: the reward fell back to "
                f"'{personal.get('fallback')}' ({personal.get('reason', '')})"
            )
        report.add_html(
            f"<p>Personal pseudo reward estimator, fitted on {personal.get('n_trials')} rated "
            f"calibration trials: {verdict}. Out-of-fold r = {personal.get('cv_r')} (95% CI "
            f"{personal.get('cv_r_ci95')}), permutation p = {personal.get('p_value')}.</p>",
            title="Personal reward estimator",
            section="Estimator",
        )
    panels = [
        (key, label)
        for key, label in (
            ("semantic_similarity", ("(a) similarity to the best-rated images", "reward")),
            ("estimator_vs_ratings", ("(b) estimator's predicted valence", "own valence rating")),
        )
        if summary.get(key)
    ]
    if panels:
        fig, ax = _figure(ncols=len(panels), size=(4 * len(panels), 3.4))
        for k, (key, (xlabel, ylabel)) in enumerate(panels):
            fig3 = summary[key]
            xy = np.asarray(fig3["pairs"], dtype=float)
            ax[0, k].scatter(xy[:, 0], xy[:, 1], s=12)
            ci = fig3["ci95"] or [float("nan")] * 2
            ax[0, k].set_title(f"r = {fig3['r']}, 95% CI [{ci[0]}, {ci[1]}], n = {fig3['n']}")
            ax[0, k].set_xlabel(xlabel)
            ax[0, k].set_ylabel(ylabel)
        fig.tight_layout()
        report.add_figure(fig, title="Poster Fig. 3 (a, b) from this session", section="Estimator")
        plt.close(fig)
    lat = [e["latency_ms"] for e in events if e["event"] == "epoch"]
    frames = [v for e in events if e["event"] == "trial" for v in e.get("frame_intervals_ms", [])]
    fig, ax = _figure(ncols=2, size=(8, 3))
    ax[0, 0].hist(lat, bins=30)
    ax[0, 0].set_xlabel("epoch latency (ms)")
    ax[0, 1].hist(frames, bins=60)
    ax[0, 1].set_xlabel("frame interval (ms)")
    fig.tight_layout()
    report.add_figure(fig, title="Timing", section="Timing")
    plt.close(fig)
    out = session / "report.html"
    report.save(out, overwrite=True, open_browser=False, verbose="error")
    return out
