"""The full-size SDXL dry run and a round's time budget (``eegs bench generation --full-size``).

The dry run is what a lab's first session does with real weights, minus the download:
the real SDXL architecture (UNet, both text encoders, fp16-fix VAE config, IP-Adapter
ViT-H image encoder and projection) is written with random weights in the Hub's file
layout, loaded back by :meth:`SDXLBackend.from_pretrained` (``check_weights``, the
pipeline's ``from_pretrained``, the Lightning UNet file on the meta device, the
IP-Adapter file) and renders one batch. Each phase records its time and the process's
peak resident memory during it (``VmHWM``, reset between phases).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: Published cost of one batched SDXL-Lightning generation of 4 images at 1024² on one
#: H100 (seconds; 4- to 8-step UNet plus VAE decode), before a GPU measures it here.
PUBLISHED_H100_GENERATION_S = (0.5, 1.3)
GOAL_READY_S = 1.0


def _peak_rss_gb() -> float | None:
    """Peak resident memory since the last reset (Linux ``VmHWM``), GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1e6, 2)
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # Linux only: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def _phase(phases: dict, name: str, sync=lambda: None) -> Iterator[None]:
    _reset_peak()
    t0 = time.perf_counter()
    yield
    sync()
    phases[name] = {"s": round(time.perf_counter() - t0, 3), "peak_rss_gb": _peak_rss_gb()}


class _ModuleTimer:
    """Seconds spent in a module's forward calls (for the per-component split)."""

    def __init__(self, module, sync) -> None:
        self.total = 0.0
        self.calls = 0
        self._sync = sync
        self._t0 = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._start),
            module.register_forward_hook(self._stop),
        ]

    def _start(self, *_) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, *_) -> None:
        self._sync()
        self.total += time.perf_counter() - self._t0
        self.calls += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def dry_run(
    protocol,
    *,
    device: str,
    dtype: str,
    size: int,
    steps: int,
    weights_dir: Path | None = None,
    batch: int = 4,
):
    """Write, load and render once; returns (the loaded backend, the figures)."""
    import torch

    from models.backends.sdxl import SDXLBackend
    from models.backends.sdxl_random import FULL, write_random_sdxl
    from models.backends.sdxl_weights import check_weights

    cfg = protocol.generation.sdxl.model_copy()
    own = weights_dir is None
    root = Path(tempfile.mkdtemp(prefix="eegs-sdxl-dry-")) if own else Path(weights_dir)
    phases: dict[str, dict] = {}
    try:
        with _phase(phases, "write_random_weights"):
            sources = write_random_sdxl(root, FULL, steps=cfg.diffusion_steps)
        disk_gb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e9
        for key, folder in sources.items():
            setattr(cfg, key, folder)
        cfg.width = cfg.height = size
        with _phase(phases, "check_weights"):
            files = check_weights(cfg)
        dev = torch.device(device)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        with _phase(phases, "load", sync):
            backend = SDXLBackend.from_pretrained(cfg, device=device, dtype=dtype, steps=steps)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        unet = _ModuleTimer(backend.pipe.unet, sync)
        vae = _ModuleTimer(backend.pipe.vae.decoder, sync)
        emb = np.random.default_rng(0).normal(size=(batch, backend.embed_dim)) * 0.1
        try:
            with _phase(phases, f"generate_{batch}", sync):
                images = backend.generate(emb.astype(np.float32), list(range(batch)))
        finally:
            unet.remove()
            vae.remove()
        made = [im for im in images if im is not None]
        with _phase(phases, f"embed_{len(made)}", sync):
            backend.embed(made)
        gen_s = phases[f"generate_{batch}"]["s"]
        figures = {
            "architecture": "SDXL UNet 2.6 B, CLIP ViT-L + bigG text encoders, fp16-fix VAE, "
            "IP-Adapter ViT-H/14 + projection: RANDOM weights (timing and memory only)",
            "files": len(files),
            "disk_gb": round(disk_gb, 2),
            "device": str(dev),
            "dtype": str(backend.dtype).replace("torch.", ""),
            "image_size": size,
            "lightning_steps": steps,
            "batch": batch,
            "images_valid": len(made),
            "phases": phases,
            "peak_rss_gb": max(p["peak_rss_gb"] or 0.0 for p in phases.values()),
            "components_s": {
                "unet_per_step": round(unet.total / max(1, unet.calls), 3),
                "unet_calls": unet.calls,
                "vae_decode": round(vae.total, 3),
                "pipeline_other": round(gen_s - unet.total - vae.total, 3),
                "vit_h_embed": phases[f"embed_{len(made)}"]["s"],
            },
        }
        if dev.type == "cuda":
            figures["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
        return backend, figures
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def round_budget(protocol, gp_gradient_ms: float, dry: dict | None = None) -> dict:
    """A round's generation cost, per refinement mode, against the trials it hides behind.

    The heuristic's ``refine_in = "render"`` makes one batched generation per inner step,
    all of them after the round's last reward; ``"embedding"`` takes the inner steps on
    the GP mean and renders once. Generation costs are the published H100 range until a
    GPU measures them (``backends.sdxl.rounds`` of the same JSON).
    """
    h = protocol.generation.heuristic
    t = protocol.presentation.timing
    trial_s = t.fixation_s + t.stimulus_s + t.iti_s
    loop = [b for b in protocol.presentation.blocks if b.kind == "closed_loop"]
    n = loop[0].n_trials if loop else h.n_children
    lo, hi = PUBLISHED_H100_GENERATION_S
    k = h.inner_steps
    grads = k * gp_gradient_ms / 1e3

    def verdict(a: float, b: float) -> str:
        if b <= GOAL_READY_S:
            return "fits"
        return "only at the low end" if a <= GOAL_READY_S else "no"

    render = (k * lo + grads, k * hi + grads)
    embedding = (lo + grads, hi + grads)
    out = {
        "trials_per_round_s": round(n * trial_s, 2),
        "trial_s": round(trial_s, 3),
        "images_per_round": n,
        "inner_steps": k,
        "published_h100_generation_s": list(PUBLISHED_H100_GENERATION_S),
        "goal_ready_after_last_reward_s": GOAL_READY_S,
        "render": {
            "generations_per_round": k,
            "ready_after_last_reward_s": [round(v, 2) for v in render],
            "meets_goal": verdict(*render),
        },
        "embedding": {
            "generations_per_round": 1,
            "ready_after_last_reward_s": [round(v, 3) for v in embedding],
            "meets_goal": verdict(*embedding),
        },
        "protocol_refine_in": h.refine_in,
        "note": "every inner step needs the GP fitted on the round's last reward, so the "
        "generations cannot start before it; the trials hide nothing of them",
    }
    if dry is not None:
        c = dry["components_s"]
        total = c["unet_per_step"] * c["unet_calls"] + c["vae_decode"] + c["vit_h_embed"]
        if total > 0:
            out["dry_run_cost_shares"] = {
                "unet": round(c["unet_per_step"] * c["unet_calls"] / total, 3),
                "vae_decode": round(c["vae_decode"] / total, 3),
                "vit_h_embed": round(c["vit_h_embed"] / total, 3),
                "measured_on": f"{dry['device']}, {dry['dtype']}, {dry['image_size']}², "
                f"{dry['lightning_steps']} step(s)",
            }
    return out
