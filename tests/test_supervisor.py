"""The supervisor: real children, crash reports with logs, clean stops by pid."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import EEGLAB_SET

from app.supervisor import ProcessCrashed, Supervisor
from workers.session_store import SessionStore


def test_crash_is_reported_with_its_log(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="supervisor")
    with Supervisor(store) as sup:
        sup.start("replay", ["replay", "/no/such/file.set"])
        with pytest.raises(ProcessCrashed) as err:
            sup.wait("replay", timeout=60)
    assert err.value.name == "replay"
    assert err.value.returncode == 2
    assert "no such file" in err.value.log_tail
    crashed = [e for e in store.events() if e["event"] == "child_crashed"]
    assert crashed[0]["name"] == "replay"
    assert "no such file" in (tmp_path / "s" / "logs" / "replay.log").read_text()
    store.close()


def test_an_optional_child_crash_is_logged_and_the_session_goes_on(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="supervisor")
    with Supervisor(store) as sup:
        child = sup.start(
            "dashboard", ["dashboard"], optional=True, env={"EEGS_DASHBOARD_TOKEN": "x" * 22}
        )
        child.proc.wait(60)  # no session given: it exits with status 2
        sup.check()  # no ProcessCrashed
        assert "dashboard" not in sup.children
    crashed = [e for e in store.events() if e["event"] == "child_crashed"]
    assert crashed[0]["name"] == "dashboard"
    assert crashed[0]["optional"]
    assert crashed[0]["returncode"] == 2
    store.close()


@pytest.mark.skipif(not EEGLAB_SET.exists(), reason="../shared data not present")
def test_stop_all_terminates_running_children(tmp_path, stream_name):
    store = SessionStore(tmp_path / "s").open(role="supervisor")
    sup = Supervisor(store)
    child = sup.start("replay", ["replay", str(EEGLAB_SET), "--name", stream_name])
    sup.check()  # running: no crash
    assert child.proc.poll() is None
    sup.stop_all(grace_s=10)
    assert child.proc.poll() is not None
    assert not sup.children
    stopped = [e for e in store.events() if e["event"] == "child_stopped"]
    assert stopped[0]["name"] == "replay"
    store.close()


def test_one_sigterm_stops_a_command_that_does_not_poll_stop(processes):
    # `eegs bench decoders` runs for minutes and never looks at app.shutdown.STOP
    proc = processes.eegs("bench", "decoders", "--skip-retrieval")
    time.sleep(8)  # past the imports: the signal handlers are installed
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(20) == 130
