"""Download exactly the files the SDXL backend reads (for a lab machine with internet).

The list is the one the loader checks (``models/backends/sdxl_weights.py``): SDXL
base's ``model_index.json`` first, then the files of the components it names, the
SDXL-Lightning UNet of ``generation.sdxl.diffusion_steps``, the fp16-fix VAE and the
IP-Adapter ViT-H weights with their image encoder; the fp16 variant of a weight file
when the repo has it. Files already present are skipped, so a cut download resumes.

Without ``--dir`` the files go to the Hugging Face cache (``HF_HUB_CACHE``), where a
session finds them with no change to the protocol. With ``--dir DIR`` they go to
``DIR/<repo id>/`` and the command prints the ``[generation.sdxl]`` lines that point a
protocol there. Sessions never download (``generation.sdxl.local_files_only``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args
from workers.errors import InputError

NAME = "fetch-weights"
HELP = "download the SDXL backend's weight files (Hugging Face Hub)"
SOURCES = ("base", "lightning", "vae", "ip_adapter")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="download to DIR/<repo id>/ instead of the Hugging Face cache",
    )


def _download(repo: str, names: tuple[str, ...], local_dir: Path | None) -> str:
    """Fetch the first of ``names`` the repo has and return it; InputError says why not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    for name in names:
        try:
            kwargs = {"local_dir": str(local_dir)} if local_dir is not None else {}
            hf_hub_download(repo, name, **kwargs)
            return name
        except RemoteEntryNotFoundError:
            continue  # the fp16 variant is not there: try the full-precision file
        except LocalEntryNotFoundError as err:
            raise InputError(
                f"cannot download {repo} :: {name}: the Hugging Face Hub cannot be reached "
                f"(offline, HF_HUB_OFFLINE set, or a proxy in the way): {err}"
            ) from None
        except OSError as err:
            raise InputError(f"cannot download {repo} :: {name}: {err}") from None
        except Exception as err:  # noqa: BLE001 - the hub's HTTP errors (401, 404 repo, ...)
            raise InputError(
                f"cannot download {repo} :: {name}: {type(err).__name__}: {err}"
            ) from None
    raise InputError(f"{repo} has none of {', '.join(names)}")


def run(args: argparse.Namespace) -> int:
    """Fetch every missing file, then check the whole set as a session would."""
    from models.backends.base import BackendUnavailableError
    from models.backends.sdxl_weights import check_weights, locate, required_files

    cfg = protocol_from_args(args, {}).generation.sdxl
    repos: dict[str, str] = {}  # the source the loader will read -> the Hub repo id
    for field in SOURCES:
        source = getattr(cfg, field)
        if Path(source).expanduser().is_dir():
            continue  # a local folder: nothing to fetch
        if args.dir is not None:
            target = (args.dir / source).resolve()
            target.mkdir(parents=True, exist_ok=True)
            setattr(cfg, field, str(target))
            repos[str(target)] = source
        else:
            repos[source] = source
    done = 0
    t0 = time.monotonic()
    for _ in range(2):  # model_index.json first: it names the rest of SDXL base
        for wf in required_files(cfg):
            if any(locate(wf.source, n) for n in wf.names):
                continue
            if wf.source not in repos:
                raise InputError(f"{wf.source} :: {wf.names[0]} is missing from that folder")
            local_dir = Path(wf.source) if args.dir is not None else None
            name = _download(repos[wf.source], wf.names, local_dir)
            done += 1
            print(f"fetched {repos[wf.source]} :: {name} ({wf.what})", file=sys.stderr)
    try:
        files = check_weights(cfg)
    except BackendUnavailableError as err:
        raise InputError(str(err)) from None
    size = sum(p.stat().st_size for p in files.values()) / 1e9
    print(
        f"fetch-weights: {done} file(s) fetched, all {len(files)} present "
        f"({size:.2f} GB) in {time.monotonic() - t0:.0f} s"
    )
    if args.dir is not None:
        print("Point the protocol at them:\n[generation.sdxl]")
        for field in SOURCES:
            print(f'{field} = "{getattr(cfg, field)}"')
    return 0
