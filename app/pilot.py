"""A whole closed-loop session against the brain model, or a real amplifier: `eegs pilot`/`run`.

The session process writes the session's protocol (the chosen file with the session's
stream names, endpoints and image folders filled in) to ``SESSION/protocol.toml``,
then starts, under one :class:`~app.supervisor.Supervisor`: the EEG source (the brain
model for a pilot, a replay, or nothing for an amplifier), ``eegs acquire``,
``eegs worker`` and ``eegs present``. It shows progress while the presentation runs
its blocks, stops everything, and writes the dataset, ``summary.json`` and
``report.html`` (:mod:`app.session_outputs`).

The calibration and validation images of a pilot are procedural images labelled by a
fixed normative rule (bright, saturated images are "amusement", dark, desaturated ones
"sadness", after the population findings of Valdez & Mehrabian 1994), a stand-in for
a labelled affective set such as ArtPhoto. The rule knows nothing of the simulated
subject's hidden weights; the brain model's oracle is read only after the session,
for ``oracle_affect_by_round``.

The rated blocks (``presentation.ratings``) are answered in a pilot by the brain model,
through the response-box stream ``presentation.response_stream`` (given a unique name
per session, like the EEG and marker streams, and set even when the protocol names
none); with a replayed recording nobody can rate, so the session's protocol turns the
ratings off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.restarts import (
    MAX_RESTARTS,
    READY_EVENTS,
    account_lost_trials,
    catch_up_rewards,
    flag_acquisition_downtime,
)
from app.session_move import copy_session, moved_protocol
from app.supervisor import DiskFull, ProcessCrashed, Supervisor
from experiment_protocols import Protocol, load_protocol
from experiment_protocols.rewards import switch_mode
from experiment_protocols.schema import PROTOCOL_DIR
from workers.errors import is_disk_full
from workers.session_store import EVENTS_FILE, EventTail, SessionStore, former_roots

logger = logging.getLogger("eegs.pilot")

PILOT_PROTOCOL = PROTOCOL_DIR / "pilot.toml"
SESSION_PROTOCOL = "protocol.toml"
LABELS = ("sadness", "amusement")
#: A rating question's time limit when the brain model answers and the protocol sets none
#: (its answers come 0.25-4 s after the question).
_BRAIN_MODEL_RATING_TIMEOUT_S = 6.0


@dataclass
class SessionConfig:
    """What one `eegs pilot` / `eegs run` does."""

    out: Path
    protocol_path: Path | None = None
    subject: str = "brain-model"
    rounds: int | None = None
    seed: int = 0
    headless: bool = False
    source: str = "brain-model"  # brain-model | amplifier | replay:FILE
    worker: str | None = None  # an existing worker's endpoint instead of starting one
    reward: str | None = (
        None  # a generation.reward.mode (modes_without_files()); None: the protocol's
    )
    family: str | None = None  # brain_model.family of the simulated participant
    realism: str | None = None  # brain_model.realism of the simulated participant
    timeout_s: float = 1800.0
    dashboard: bool = True  # the experimenter's dashboard (app/dashboard), an optional child
    dashboard_port: int | None = None  # None: a free port
    dashboard_host: str = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normative_valence(image) -> float:
    """The normative rule of the pilot's labelled sets: mean HSV value plus saturation."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64) / 255.0
    return float(hsv[..., 2].mean() + hsv[..., 1].mean())


_RENDER_CHUNK = 64  # procedural renders held in float at once (~100 MB)


def make_labelled_sets(folder: Path, n_per_class: dict[str, int], seed: int) -> dict[str, Path]:
    """Write procedural image sets, one subfolder per label, for each block name.

    Images are drawn from the renderer's prior; for every block, the ``n`` with the
    highest normative score are "amusement" and the ``n`` lowest "sadness", drawn from
    a fresh sample per block so that validation images were never calibrated on.
    """
    from models.backends.procedural import ProceduralRenderer, sample_parameters

    renderer = ProceduralRenderer(256)
    rng = np.random.default_rng([seed, 7])
    out = {}
    for block, n in n_per_class.items():
        n_draw = max(8 * n, 32)
        params = sample_parameters(n_draw, rng)
        seeds = rng.integers(0, 2**31 - 1, n_draw)
        from PIL import Image

        images = [  # in chunks: 200 calibration trials draw 800 renders, GBs at once
            Image.fromarray((a * 255 + 0.5).astype(np.uint8))
            for i in range(0, n_draw, _RENDER_CHUNK)
            for a in renderer.render(
                params[i : i + _RENDER_CHUNK], [int(s) for s in seeds[i : i + _RENDER_CHUNK]]
            )  # fmt: skip
        ]
        order = np.argsort([normative_valence(im) for im in images])
        for label, idx in (("sadness", order[:n]), ("amusement", order[-n:])):
            sub = folder / block / label
            sub.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(idx):
                images[i].save(sub / f"{block}-{label}-{k:03d}.png")
        out[block] = folder / block
    return out


def _strip_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_strip_none(v) for v in obj]
    return obj


def write_protocol(protocol: Protocol, path: Path) -> Protocol:
    """Write a protocol as TOML (every field explicit) and load it back, validated."""
    import tomli_w

    data = _strip_none(protocol.model_dump(mode="json"))
    path.write_text(
        f"# Written by eegs for this session from {protocol.source}\n" + tomli_w.dumps(data)
    )
    return load_protocol(path)


def prepare_protocol(config: SessionConfig, store: SessionStore) -> Protocol:
    """The session's protocol: unique stream names and ports, image folders, rounds."""
    base = load_protocol(config.protocol_path or PILOT_PROTOCOL)
    tag = uuid.uuid4().hex[:6]
    pres = base.presentation.model_dump()
    needs = {b["kind"]: b["n_trials"] for b in pres["blocks"] if b["source"] == "folder"}
    folders = {}
    if needs and any(not b["folder"] for b in pres["blocks"] if b["source"] == "folder"):
        folders = make_labelled_sets(
            store.root / "stimuli", {k: (n + 1) // 2 for k, n in needs.items()}, config.seed
        )
    for block in pres["blocks"]:
        if block["source"] == "folder" and not block["folder"]:
            block["folder"] = str(folders[block["kind"]].resolve())
        elif block["source"] == "folder":
            block["folder"] = str((Path(base.source).parent / block["folder"]).resolve())
        if block["kind"] == "closed_loop" and config.rounds is not None:
            block["n_rounds"] = config.rounds
    overrides: dict[str, Any] = {"presentation.blocks": pres["blocks"]}
    gen = base.generation.model_dump()
    gen["endpoint"] = config.worker or f"tcp://127.0.0.1:{_free_port()}"
    gen["seed"] = config.seed
    if config.rounds is not None:
        gen["heuristic"]["max_rounds"] = max(config.rounds - 1, 1)
    if config.reward is not None:
        gen["reward"] = switch_mode(base.generation.reward, config.reward).model_dump()
    overrides["generation"] = gen
    overrides["network.epochs_endpoint"] = f"tcp://127.0.0.1:{_free_port()}"
    if config.source != "amplifier":  # our own streams: unique names
        overrides["streams.eeg"] = f"EEGS-EEG-{tag}"
        overrides["streams.markers"] = f"EEGS-markers-{tag}"
    ratings = base.presentation.ratings.model_dump()
    if config.source == "brain-model" and ratings["enabled"]:
        # the brain model answers the ratings on it, as a participant's response box;
        # it always answers, so a rating waits for it (not --headless's text_min_s)
        overrides["presentation.response_stream"] = f"EEGS-responses-{tag}"
        ratings["timeout_s"] = ratings["timeout_s"] or _BRAIN_MODEL_RATING_TIMEOUT_S
        overrides["presentation.ratings"] = ratings
    elif config.source.startswith("replay:") and ratings["enabled"]:
        # a recording has nobody in front of the screen to rate the images
        overrides["presentation.ratings"] = {**ratings, "enabled": False}
    bm = base.brain_model.model_dump()
    bm["subject_seed"] = config.seed
    if config.family is not None:
        bm["family"] = config.family
    if config.realism is not None:
        bm = base.brain_model.model_validate(bm).at_realism(config.realism)
    overrides["brain_model"] = bm
    protocol = base.with_overrides(overrides)
    return write_protocol(protocol, store.root / SESSION_PROTOCOL)


class Progress:
    """One console line per second: block, round, trials, epochs, rewards."""

    def __init__(self, store: SessionStore, stream=sys.stderr) -> None:
        self.store, self.stream, self._next = store, stream, 0.0
        # a terminal redraws one line each second; a log file gets a line every 10 s
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._tail = EventTail(store.root / EVENTS_FILE)
        self._counts: dict[str, int] = {}
        self._where = ""
        self._reshowing: str | None = None  # the block whose lost trials are shown again

    def update(self, force: bool = False) -> None:
        """Redraw the line (at most once a second)."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + (1.0 if self.tty else 10.0)
        counts = self._counts
        for e in self._tail.new():
            key = "batch" if e["event"] == "image_batch" and "image_ids" in e else e["event"]
            counts[key] = counts.get(key, 0) + 1
            if e["event"] == "trials_reshown":  # at a block's end; counted apart
                counts["reshown"] = counts.get("reshown", 0) + len(e.get("trials", []))
                self._reshowing = e.get("block")
            if e["event"] == "marker" and e.get("marker", {}).get("event") == "stimulus_onset":
                m = e["marker"]
                if m.get("block") != self._reshowing:
                    self._reshowing = None
                again = "re-show " if self._reshowing else ""
                self._where = f"{again}{m.get('block', '?')} round {m.get('round', 0)}"
        reshown = counts.get("reshown", 0)
        line = (
            f"[eegs] {self._where:<22} trials {counts.get('trial', 0) - reshown:3d}"
            + (f" (+{reshown} re-shown)" if reshown else "")
            + f"  epochs {counts.get('epoch', 0):3d}  rewards {counts.get('reward', 0):3d}  "
            f"batches {counts.get('batch', 0):2d}"
        )
        self.stream.write("\r" + line if self.tty else line + "\n")
        self.stream.flush()


def _wait_events(tail: EventTail, sup: Supervisor, timeouts: dict[str, float]) -> None:
    """Wait for each event named in ``timeouts`` (seconds from now) to come after ``tail``.

    The tail is opened before the processes start, so that an event logged while another
    is awaited still counts, and a resumed session's old ones do not.
    """
    t0, pending = time.monotonic(), dict(timeouts)
    while pending:
        sup.check()
        for e in tail.new():
            pending.pop(e["event"], None)
        late = [name for name, s in pending.items() if time.monotonic() - t0 > s]
        if late:
            raise TimeoutError(f"no '{late[0]}' within {pending[late[0]]:.0f} s")
        time.sleep(0.1)


def run_session(config: SessionConfig, stop=lambda: False) -> dict[str, Any]:
    """Run the whole session; returns ``summary.json``'s content.

    The session directory is named by its absolute path everywhere (the children's
    arguments, the image paths in its events), so that a session moved to another disk
    can be followed (:mod:`app.session_move`).
    """
    config = dataclasses.replace(config, out=Path(config.out).resolve())
    store = SessionStore(config.out).open(role="session", subject=config.subject)
    protocol = prepare_protocol(config, store)
    store.update_info(
        root=str(store.root.resolve()),  # a session moved to another disk is followed
        protocol_file=str(store.root / SESSION_PROTOCOL),
        protocol_sha256=protocol.sha256,
        source=config.source,
        seed=config.seed,
        worker=config.worker,
        headless=config.headless,
    )
    return _supervise(config, store, protocol, resume=False, stop=stop)


def resume_session(
    session: Path,
    *,
    headless: bool | None = None,
    stop=lambda: False,
    timeout_s: float = 1800.0,
    to: Path | None = None,
) -> dict[str, Any]:
    """Continue an interrupted session from where it stopped (``eegs resume``).

    The same protocol file, streams and endpoints are used again. The worker rebuilds
    its state from the session directory (:mod:`workers.generation.restore`), the
    presentation shows only what was never shown (:mod:`app.presentation.resume`),
    and the acquisition records into a new XDF part beside the first. ``to``: a folder
    on another disk the session is copied to first (:mod:`app.session_move`); a session
    moved by hand is followed too.
    """
    from workers.errors import InputError

    session = Path(session).resolve()
    info = SessionStore(session).read_info()
    if not info:
        raise InputError(f"{session}: not a session directory (no session.json)")
    if info.get("status") == "completed":
        raise InputError(f"{session}: the session completed; there is nothing to resume")
    ppath = session / SESSION_PROTOCOL
    if not ppath.exists():
        raise InputError(f"{session}: no {SESSION_PROTOCOL}; was it started by eegs pilot/run?")
    source, seed, worker = (
        info.get("source", "brain-model"),
        info.get("seed", 0),
        info.get("worker"),
    )
    if (
        not isinstance(source, str)
        or isinstance(seed, bool)
        or not isinstance(seed, int)
        or not 0 <= seed < 2**32
        or not isinstance(worker, str | None)
    ):
        raise InputError(
            f"{session / 'session.json'}: source {source!r}, seed {seed!r} or worker "
            f"{worker!r} is not what eegs pilot/run wrote (a text, an integer from 0 to "
            "2**32 - 1, an endpoint or null)"
        )
    if source.startswith("replay:"):
        raise InputError(
            f"{session}: a replay-sourced session cannot be resumed (the replay would start "
            "its recording again from the beginning); start a new session instead"
        )
    if to is not None:
        session = copy_session(session, to)
        ppath = session / SESSION_PROTOCOL
        sys.stderr.write(f"[eegs] session copied to {session}; the original is untouched\n")
    moved = moved_protocol(session, SESSION_PROTOCOL)
    if moved is not None:
        protocol = write_protocol(moved[0], ppath)
        SessionStore(session).update_info(
            root=str(session.resolve()),
            protocol_file=str(ppath),
            protocol_sha256=protocol.sha256,
            moved_from=str(moved[1]),
            former_roots=[*former_roots(session), str(moved[1])],
        )
    protocol = load_protocol(ppath)
    config = SessionConfig(
        out=session,
        protocol_path=ppath,
        subject=str(info.get("subject", "")),
        seed=seed,
        headless=bool(info.get("headless")) if headless is None else headless,
        source=source,
        worker=worker,
        timeout_s=timeout_s,
    )
    store = SessionStore(session).open(role="session")
    attempt = 1 + sum(e["event"] == "session_resumed" for e in store.events())
    if moved is not None:
        store.log("session_moved", moved_from=str(moved[1]), root=str(session.resolve()))
    store.log(
        "session_resumed",
        attempt=attempt,
        previous_status=info.get("status"),
        previous_failure=info.get("failure"),
    )
    return _supervise(config, store, protocol, resume=True, stop=stop)


def _supervise(
    config: SessionConfig, store: SessionStore, protocol: Protocol, *, resume: bool, stop
) -> dict[str, Any]:
    """Start the session's processes, watch them until the presentation ends, stop them."""
    ppath = str(store.root / SESSION_PROTOCOL)
    status = "failed"
    failure: dict[str, Any] | None = None
    sup = Supervisor(store)
    sup.on_restart = lambda name, record: _after_restart(store, protocol, name, record)
    progress = Progress(store)
    try:
        control = _start_dashboard(config, store, sup, ppath)
        if config.source == "brain-model":
            sup.start("brain-model", ["brain-model", "--protocol", ppath])
        elif config.source.startswith("replay:"):
            sup.start(
                "replay",
                [
                    "replay",
                    config.source.split(":", 1)[1],
                    "--name",
                    protocol.streams.eeg,
                ],
                expected_exit=True,
            )
        ready = EventTail(store.root / EVENTS_FILE)
        ready.new()  # a resumed session's old events do not count
        sup.start(
            "acquire",
            ["acquire", "--protocol", ppath, "--session", str(store.root)],
            restarts=MAX_RESTARTS,
            ready_event=READY_EVENTS["acquire"],
        )
        # the worker loads its models while the acquisition connects: neither needs the
        # other to start (ZeroMQ connects before the bind), and the participant waits less
        timeouts = {READY_EVENTS["acquire"]: 120.0}
        if config.worker is None:
            sup.start(
                "worker",
                ["worker", "--protocol", ppath, "--session", str(store.root)],
                restarts=MAX_RESTARTS,
                ready_event=READY_EVENTS["worker"],
            )
            timeouts[READY_EVENTS["worker"]] = 300.0
        _wait_events(ready, sup, timeouts)
        present = ["present", "--protocol", ppath, "--session", str(store.root)]
        if protocol.recording.enabled:
            present += ["--wait-recording", "30"]
        if resume:
            present.append("--resume")
        if control:
            present += ["--control", control]
        present.append("--headless" if config.headless else "--windowed")
        child = sup.start("present", present, expected_exit=True)
        deadline = time.monotonic() + config.timeout_s
        while child.proc.poll() is None:
            if stop():
                sup.stop("present")
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise TimeoutError(f"the presentation ran past {config.timeout_s:.0f} s")
            sup.check()
            progress.update()
            time.sleep(0.2)
        sup.wait("present", 1)
        time.sleep(protocol.epochs.tmax + 1.0)  # the last epochs and rewards land
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except DiskFull as err:  # everything stops cleanly; resumed on another disk
        logger.error("%s", err.reason)
        failure = err.record()
        store.log("session_failed", **failure)
        raise
    except ProcessCrashed as err:
        logger.error("%s", err)
        status = "crashed"
        raise
    finally:
        progress.update(force=True)
        if progress.tty:
            sys.stderr.write("\n")
        _stop_in_order(sup, protocol)
        account_lost_trials(store, protocol)
        store.log("session_status", status=status, **({"failure": failure} if failure else {}))
        summary = _outputs(store, protocol, config, failure)
        written = {"summary_file": "summary.json"} if summary else {}
        store.close(status, **written, **({"failure": failure} if failure else {}))
    return summary


def _outputs(
    store: SessionStore, protocol: Protocol, config: SessionConfig, failure: dict | None
) -> dict[str, Any]:
    """The dataset, summary and report; on a full disk, none (``eegs resume`` writes them)."""
    from app.session_outputs import write_outputs

    if failure is not None and failure.get("reason") == "disk_full":
        store.log("outputs_skipped", reason="disk full: eegs resume (or summarize) writes them")
        return {}
    try:
        return write_outputs(store.root, protocol, pilot=config.source == "brain-model")
    except OSError as err:
        if not is_disk_full(err):
            raise
        store.release_reserve()
        store.log("outputs_skipped", reason=f"disk full: {err}")
        return {}


def _after_restart(store: SessionStore, protocol: Protocol, name: str, record: dict) -> None:
    """After a restart: nothing of the downtime may be lost silently.

    A restarted worker gets the epochs stored while it was down; the trials shown while
    the acquisition was down are flagged at once (their images may be shown again).
    """
    if name == "worker":
        catch_up_rewards(store, protocol)
    elif name == "acquire":
        flag_acquisition_downtime(store, protocol, record["t_crash_wall"])


def _start_dashboard(
    config: SessionConfig, store: SessionStore, sup: Supervisor, ppath: str
) -> str | None:
    """Start the experimenter's dashboard, an optional child; returns its control endpoint.

    Its tokens reach it in its environment, never on a command line; the URL is printed
    and logged (``dashboard_started``). A dashboard that fails is logged and ignored.
    """
    if not config.dashboard:
        return None
    from app.dashboard import OBSERVER_TOKEN_ENV, TOKEN_ENV, url

    tokens = {TOKEN_ENV: secrets.token_urlsafe(16), OBSERVER_TOKEN_ENV: secrets.token_urlsafe(16)}
    host, port = config.dashboard_host, config.dashboard_port or _free_port()
    control = f"tcp://127.0.0.1:{_free_port()}"
    args = ["dashboard", "--session", str(store.root), "--protocol", ppath]
    args += ["--port", str(port), "--host", host, "--control", control]
    sup.start("dashboard", args, optional=True, env=tokens)
    page, observer = url(host, port, tokens[TOKEN_ENV]), url(host, port, tokens[OBSERVER_TOKEN_ENV])
    store.log("dashboard_started", url=page, observer_url=observer, control=control)
    sys.stderr.write(f"[eegs] dashboard: {page}\n[eegs] observer:  {observer}\n")
    sys.stderr.flush()
    return control


def _stop_in_order(sup: Supervisor, protocol: Protocol) -> None:
    """Stop the display first, give the acquisition the last epoch's window, then the rest.

    Stopped together, the acquisition would drop the epochs of the last stimuli shown.
    """
    present = sup.children.get("present")
    if present is not None and present.proc.poll() is None:
        sup.stop("present")
        acquire = sup.children.get("acquire")
        if acquire is not None and acquire.proc.poll() is None:
            time.sleep(protocol.epochs.tmax + 0.5)
    sup.stop_all()


def load_summary(out: Path) -> dict[str, Any]:
    """``summary.json`` of a session."""
    return json.loads((out / "summary.json").read_text())
