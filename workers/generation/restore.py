"""A worker that joins a session with history picks up where the last one stopped.

After a crash (``eegs resume``), the new worker rebuilds what the dead one held from
what it wrote to the session directory: the images it issued
(``generation/round-XX/*.json`` with their embeddings), every reward it used
(``events.jsonl``), the pool images already handed out, and the generator's round
counter and best-reward history. Epochs that reached ``epochs/`` but were never scored
(the worker died first) are scored now, so no trial's reward is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from workers.generation.ledger import Issued
from workers.generation.provenance import GENERATION_DIR
from workers.messages import EpochMessage
from workers.session_store import EVENTS_FILE, SessionStore, read_events, read_sidecar

logger = logging.getLogger("eegs.generation")


@dataclass
class Restored:
    """What a worker took over from the session's history."""

    issued: int = 0
    rewards: int = 0
    rewards_without_image: int = 0
    epochs_scored_now: int = 0
    rounds: int = 0

    @property
    def empty(self) -> bool:
        """True for a fresh session."""
        return not (self.issued or self.rewards or self.epochs_scored_now)


def _issued_images(service, root: Path) -> int:
    n = 0
    for sidecar in sorted((root / GENERATION_DIR).glob("round-*/*.json")):
        weights = sidecar.with_suffix(".safetensors")
        if not weights.exists():
            continue
        provenance = read_sidecar(sidecar)
        if provenance is None or not isinstance(provenance.get("image_id"), str):
            logger.warning("%s: no image id; that image is not taken over", sidecar)
            continue
        image_id = provenance.pop("image_id")
        embedding = load_file(str(weights))["embedding"]
        service.issued[image_id] = Issued(embedding, int(provenance["round"]), provenance)
        if provenance.get("pool_id"):
            service.generator.mark_issued([provenance["pool_id"]])
        n += 1
    return n


def restore(service, root: Path) -> Restored:
    """Load the session's generator state into ``service`` (a GenerationService)."""
    root = Path(root)
    out = Restored(issued=_issued_images(service, root))
    gen = service.generator
    last_batch = None
    for e in read_events(root / EVENTS_FILE):
        if e["event"] == "image_batch" and "image_ids" in e:  # the worker's own record
            last_batch = e
        if e["event"] != "reward":
            continue
        trial = int(e["trial_id"])
        service.trials_scored.add(trial)
        if not e.get("used") or trial in service.trial_rewards:
            continue
        value = float(e["reward"])
        image_id = e.get("image_id")
        if image_id in service.issued:
            item = (image_id, service.issued[image_id].embedding, None)
        elif isinstance(e.get("image"), str) and Path(e["image"]).is_file():
            item = (image_id or Path(e["image"]).stem, None, e["image"])
        else:
            out.rewards_without_image += 1
            continue
        service.credit(trial, *item, value)
        out.rewards += 1
    if last_batch is not None:
        gen.round = int(last_batch.get("generator_round", last_batch["round"] + 1))
        gen.best_by_round = [float(v) for v in last_batch.get("best_by_round", [])]
        # a fresh random stream: the restarted worker must not repeat the first one's draws
        gen.rng = np.random.default_rng([service.g.seed, gen.round])
    out.rounds = gen.round
    for epoch in SessionStore(root).epochs():
        if epoch.trial_id in service.trials_scored:
            continue
        meta = epoch.meta
        msg = EpochMessage.of(
            epoch.data,
            session=root.name,
            trial_id=epoch.trial_id,
            marker=meta.get("marker", {}),
            ch_names=meta["ch_names"],
            sfreq=meta["sfreq"],
            tmin=meta["tmin"],
            quality=meta.get("quality", {}),
        )
        service.score_epoch(msg, [epoch.data])
        out.epochs_scored_now += 1
    return out
