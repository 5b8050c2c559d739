"""Process priority: set first, inherited by the threads started after it, never fatal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from workers.priority import ACQUISITION_RT, FRAME_LOOP_RT

_CHILD = """
import logging, os, sys, threading
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from workers.priority import set_niceness
got = set_niceness(int(sys.argv[1]), "test")
seen = []
t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
t.start(); t.join()
print(got, seen[0])
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (its priority is its own), killed if it hangs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(niceness: int) -> subprocess.CompletedProcess:
    return _python(_CHILD, str(niceness))


@pytest.mark.timeout(90)
def test_a_higher_niceness_is_taken_and_inherited_by_later_threads():
    res = _run(7)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["7", "7"]


@pytest.mark.timeout(90)
def test_a_lower_niceness_is_taken_where_allowed_else_a_warning_saying_how():
    res = _run(-5)
    assert res.returncode == 0, res.stderr
    got, thread = (int(v) for v in res.stdout.split())
    assert thread == got
    if os.geteuid() == 0:
        assert got == -5
        assert "limits.d" not in res.stderr
    else:  # the session goes on at its inherited priority, and says how to allow it
        assert got == os.getpriority(os.PRIO_PROCESS, 0)
        assert "limits.d" in res.stderr


_RUSH = """
import os, threading
from workers.priority import rush_frame_loop
ready, done = threading.Event(), threading.Event()
tids = {}
def idle(name):
    tids[name] = threading.get_native_id()
    if name.startswith("llvmpipe"):  # what Mesa calls the threads that draw a frame
        with open(f"/proc/self/task/{tids[name]}/comm", "w") as fh:
            fh.write(name)
    done.wait()
threads = [threading.Thread(target=idle, args=(n,)) for n in ("llvmpipe-0", "loader")]
for t in threads: t.start()
while len(tids) < 2: pass
ok = rush_frame_loop("test")
policy = {n: os.sched_getscheduler(tid) for n, tid in tids.items()}
policy["main"] = os.sched_getscheduler(threading.get_native_id())
prio = os.sched_getparam(threading.get_native_id()).sched_priority
gl_prio = os.sched_getparam(tids["llvmpipe-0"]).sched_priority
done.set()
for t in threads: t.join()
print(ok, policy["main"] == os.SCHED_RR, policy["llvmpipe-0"] == os.SCHED_RR,
      policy["loader"] == os.SCHED_OTHER, prio, gl_prio)
"""

_RUSH_PROCESS = """
import logging, os, threading
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from workers.priority import rush_process
ok = rush_process("test")
seen = []
def later():
    tid = threading.get_native_id()
    seen.append((os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority))
t = threading.Thread(target=later); t.start(); t.join()
print(ok, seen[0][0] == os.SCHED_RR, seen[0][1])
"""


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling")
@pytest.mark.timeout(120)
def test_the_frame_loop_and_software_gl_threads_go_real_time_and_nothing_else():
    res = _python(_RUSH)
    assert res.returncode == 0, res.stderr[-2000:]
    out, err = res.stdout, res.stderr
    ok, main_rr, gl_rr, loader_other, prio, gl_prio = out.split()[-6:]
    assert loader_other == "True"  # a helper thread that existed before stays ordinary
    if os.geteuid() == 0:
        assert (ok, main_rr, gl_rr) == ("True", "True", "True")
        assert int(prio) == int(gl_prio) == FRAME_LOOP_RT
    else:
        assert (ok, main_rr, gl_rr) == ("False", "False", "False")
        assert "rtprio" in err


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling")
@pytest.mark.timeout(90)
def test_the_acquisition_goes_real_time_below_the_frame_loop_with_every_later_thread():
    res = _python(_RUSH_PROCESS)
    assert res.returncode == 0, res.stderr[-2000:]
    ok, thread_rr, prio = res.stdout.split()[-3:]
    if os.geteuid() == 0:
        assert (ok, thread_rr) == ("True", "True")  # a thread started afterwards inherits it
        assert int(prio) == ACQUISITION_RT < FRAME_LOOP_RT  # a frame goes before an epoch
    else:
        assert (ok, thread_rr) == ("False", "False")
        assert "rtprio" in res.stderr


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (apt-get install xvfb)")
@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling")
@pytest.mark.timeout(60)
def test_the_virtual_display_server_goes_real_time_with_the_frame_loop():
    from app.presentation import display

    assert display.rush_virtual_display() is None  # none started: nothing to do
    with display.virtual_display(320, 240):
        pid = display._SERVERS[-1]
        ok = display.rush_virtual_display()
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        policies = {os.sched_getscheduler(t) for t in tids}
        prios = {os.sched_getparam(t).sched_priority for t in tids}
    if os.geteuid() == 0:
        assert ok is True
        assert policies == {os.SCHED_RR}
        assert prios == {FRAME_LOOP_RT}
    else:
        assert ok is False
        assert os.SCHED_RR not in policies
    assert display.rush_virtual_display() is None  # the server ended with the block
