"""One block of ``eegs present``: its rounds, between ``block_start`` and ``block_end``.

A round queues its images (a folder's draw, the generator's batch asked for, or what a
resumed round has left) and runs trials until they are shown or stop coming; a block of
generated images ends early when the generator converges, and then shows once more each
image whose trial lost its epoch (``presentation.reshow_lost_trials``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pylsl

from app.presentation.images import FolderPlan
from app.presentation.resume import BlockProgress, saved_round_images
from app.presentation.trial import run_trial
from experiment_protocols.presentation import Block

if TYPE_CHECKING:
    from app.presentation.runner import BlockPlan, Runner


@dataclass
class Round:
    """One round of a block: the trials it still has to show, and how it is going."""

    plan: BlockPlan
    index: int
    remaining: int
    folder_plan: FolderPlan | None
    t_progress: float
    trials: list[int] = field(default_factory=list)
    failures: int = 0
    dead: str | None = None
    reshow: bool = False  # images of the block shown once more (reshow_lost)


def images_folder(block: Block, round_: int) -> str:
    """Folder under ``SESSION/images`` of a generated round's images."""
    name = f"round-{round_:02d}"
    return name if block.kind == "closed_loop" else f"{block.label}/{name}"


def run_block(runner: Runner, plan: BlockPlan, done: BlockProgress | None = None) -> None:
    """All rounds of one block, between block_start and block_end markers.

    ``done`` (a resumed session) is what the block showed before: it starts at
    the first round with images left, and shows only those.
    """
    block = plan.block
    info = {"block": block.label, "kind": block.kind}
    first = done.start_round(block.trials_per_round) if done is not None else 0
    runner.markers.on_next_flip(
        "block_start",
        **info,
        n_rounds=block.n_rounds,
        n_trials=block.n_trials,
        presentations=block.presentations,
        source=plan.source,
        resumed_at_round=first if done is not None else None,
    )
    runner.frame("blank")
    runner.n_blocks += 1
    folder_plan = (
        FolderPlan(plan.folder, f"{runner.pres.seed}-{runner.n_blocks}")
        if plan.source == "folder"
        else None
    )
    reason = _rounds(runner, plan, folder_plan, done, first)
    intact = reason == "completed" or reason.startswith("generator converged")
    if plan.source == "generator" and runner.pres.reshow_lost_trials and intact:
        reshow_lost(runner, plan)
    runner.round = None
    runner.markers.on_next_flip("block_end", **info, reason=reason)
    runner.frame("blank")


def _rounds(
    runner: Runner,
    plan: BlockPlan,
    folder_plan: FolderPlan | None,
    done: BlockProgress | None,
    first: int,
) -> str:
    """The block's rounds from ``first`` on; returns why they ended."""
    block = plan.block
    trials: list[int] = done.trials.get(first - 1, []) if done is not None else []
    for r in range(first, block.n_rounds):
        rnd = Round(plan, r, block.trials_per_round, folder_plan, pylsl.local_clock())
        runner.round = rnd
        if done is not None and r == first:
            resume_round(runner, rnd, done, first)
        elif folder_plan is not None:
            for ref in folder_plan.draw(block.n_trials, r):
                runner.loader.submit(ref)
        else:
            runner.request(plan, r, trials)  # or released, when it came ahead of the block
        run_round(runner, rnd)
        trials = rnd.trials
        if rnd.dead is not None:
            runner.log(
                "round_ended_early", block=block.label, kind=block.kind, round=r, reason=rnd.dead
            )
            return rnd.dead
        converged = runner.converged(plan, r)
        if converged is not None:
            return f"generator converged: {converged}"
    return "completed"


def run_round(runner: Runner, rnd: Round) -> None:
    """Trials until the round's images are shown or stop coming."""
    while rnd.remaining > 0 and rnd.dead is None:
        if run_trial(runner, rnd):
            runner.between_trials()
    end_round(runner, rnd)


def reshow_lost(runner: Runner, plan: BlockPlan) -> None:
    """Show once more each image of the block whose trial lost its epoch (new trial ids)."""
    from app.presentation.reshow import lost_images

    lost = lost_images(runner.images_root.parent, plan.block.label, runner.reshown)
    for r, items in sorted(lost.items()):
        rnd = Round(plan, r, len(items), None, pylsl.local_clock(), reshow=True)
        runner.round = rnd
        for tid, ref in items:
            runner.reshown.add(tid)
            runner.loader.submit(ref)
        trials = [tid for tid, _ in items]
        runner.log("trials_reshown", block=plan.block.label, round=r, trials=trials)
        run_round(runner, rnd)


def resume_round(runner: Runner, rnd: Round, done: BlockProgress, first: int) -> None:
    """Queue the images of a resumed block's first round that were never shown."""
    plan, block = rnd.plan, rnd.plan.block
    shown = Counter(done.shown.get(first, []))
    rnd.trials = list(done.trials.get(first, []))
    if rnd.folder_plan is not None:
        for r in range(first):  # the same draws as the first run
            rnd.folder_plan.draw(block.n_trials, r)
        refs = rnd.folder_plan.draw(block.n_trials, first)
    else:
        refs = saved_round_images(runner.images_root / images_folder(block, first), first)
    # each image the times it is still owed, in passes (repeats kept apart)
    left = [ref for j in range(block.presentations) for ref in refs if shown[str(ref.path)] <= j]
    rnd.remaining = block.trials_per_round - shown.total()
    runner.log(
        "round_resumed",
        block=block.label,
        round=first,
        shown_before=shown.total(),
        images_left=len(left),
    )
    if rnd.folder_plan is None and not left:
        runner.request(plan, first, done.trials.get(first - 1, []))
        return
    rnd.remaining = min(rnd.remaining, len(left))
    for ref in left[: rnd.remaining]:
        runner.loader.submit(ref)
    runner.requested.add((plan.block.label, first))


def end_round(runner: Runner, rnd: Round) -> None:
    """Drop what a finished round leaves behind, and what the generator still makes for it."""
    last = rnd.index + 1 >= rnd.plan.block.n_rounds
    if rnd.dead is not None or last:
        # leftovers of a broken round, or of a block: never shown later. A round that
        # completed mid-block left nothing of its own, only the next round's images
        # (asked for during its last stimulus), which are kept.
        runner.loader.clear()
        runner.stager.clear()
    if runner.client is not None:
        runner.client.cancel(rnd.plan.block.label, rnd.index)
