"""Resuming on another disk: a session copied with its room checked, a moved one followed.

The whole resumed session after a move is `tests/test_resume.py`; the disk filling up is
`tests/test_faults.py` and `eegs bench faults --only disk_full`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import run_main

from app import session_move
from app.pilot import SESSION_PROTOCOL, write_protocol
from experiment_protocols import load_protocol
from workers.errors import InputError
from workers.session_store import RESERVE_FILE, EventTail, SessionStore, read_events

pytestmark = pytest.mark.timeout(60)


def _session(root):
    """A session recorded at ``root``: its own stimulus folder in its protocol, paths in its
    events and epochs, as `eegs pilot` leaves them."""
    store = SessionStore(root).open(role="session")
    stimuli = root / "stimuli" / "calibration"
    stimuli.mkdir(parents=True)
    image = root / "images" / "round-00" / "a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    base = load_protocol()
    blocks = base.presentation.model_dump()["blocks"]
    blocks[0]["folder"] = str(stimuli)
    write_protocol(base.with_overrides({"presentation.blocks": blocks}), root / SESSION_PROTOCOL)
    store.update_info(root=str(root.resolve()), protocol_file=str(root / SESSION_PROTOCOL))
    store.log("trial", trial=1, image=str(image))
    store.write_epoch(1, np.zeros((2, 5)), {"trial_id": 1, "marker": {"image": str(image)}})
    store.close("failed")
    return image.relative_to(root)


def test_a_session_is_copied_to_another_folder_only_with_room_there(tmp_path, monkeypatch):
    src = tmp_path / "disk-a" / "S01"
    _session(src)
    assert (src / RESERVE_FILE).exists()  # set aside by the session's owner
    with pytest.raises(InputError, match="inside the session"):
        session_move.copy_session(src, src / "sub")
    monkeypatch.setattr(session_move, "HEADROOM_BYTES", 1 << 62)
    with pytest.raises(InputError, match="MiB free; the session needs"):
        session_move.copy_session(src, tmp_path / "disk-b")
    monkeypatch.undo()
    dest = session_move.copy_session(src, tmp_path / "disk-b")
    assert dest == (tmp_path / "disk-b" / "S01").resolve()
    assert not (dest / RESERVE_FILE).exists()  # the new owner sets its own aside
    assert (dest / "events.jsonl").read_bytes() == (src / "events.jsonl").read_bytes()
    assert not list((tmp_path / "disk-b").glob(".*partial"))
    with pytest.raises(InputError, match="exists already"):
        session_move.copy_session(src, tmp_path / "disk-b")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        session_move.copy_session(src, tmp_path / "a-file")


def test_a_moved_session_reads_its_own_paths_where_it_is_now(tmp_path):
    old = tmp_path / "disk-a" / "S01"
    image = _session(old)
    new = tmp_path / "disk-b" / "S01"
    new.parent.mkdir()
    shutil.move(old, new)  # by hand: the old folder is gone

    protocol, was = session_move.moved_protocol(new, SESSION_PROTOCOL)
    assert was == old.resolve()
    assert protocol.presentation.blocks[0].folder == str(new.resolve() / "stimuli" / "calibration")
    assert session_move.moved_protocol(old.parent, SESSION_PROTOCOL) is None  # not a session

    SessionStore(new).update_info(former_roots=[str(old.resolve())], root=str(new.resolve()))
    (trial,) = [e for e in read_events(new / "events.jsonl") if e["event"] == "trial"]
    assert trial["image"] == str(new.resolve() / image)
    (tailed,) = [e for e in EventTail(new / "events.jsonl").new() if e["event"] == "trial"]
    assert tailed["image"] == trial["image"]
    (epoch,) = SessionStore(new).epochs()
    assert epoch.meta["marker"]["image"] == trial["image"]
    raw = (new / "events.jsonl").read_text()
    assert str(old.resolve()) in raw  # the log itself is never rewritten


def test_resume_to_a_folder_that_cannot_take_it_exits_2(tmp_path, capsys):
    src = tmp_path / "S01"
    _session(src)
    info = json.loads((src / "session.json").read_text())
    assert info["status"] == "failed"
    assert run_main(["resume", str(src), "--to", str(src / "inside")]) == 2
    err = capsys.readouterr().err
    assert "inside the session" in err
    assert "Traceback" not in err
