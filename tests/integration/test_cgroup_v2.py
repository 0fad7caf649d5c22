"""The cgroup v2 path of workers/sandbox/cgroups.py against a real cgroup2 hierarchy and real processes.

This project's machines bind pids, memory and cpu to v1 hierarchies, so the unified hierarchy (mounted
here afresh with ``mount -t cgroup2``) offers none of them: what runs for real is everything of the v2
path that needs no controller: the launcher's join, ``cgroup.kill`` of a session's whole tree (setsid'ed
and double-forked daemons, a process that keeps forking), job groups as children of the session's, removed
deepest first, ``pids``/``names``/``job_*``, ``cpu.stat`` (kept by the core, controller or not), and the
refusal of a v2 hierarchy without the controllers. The limits themselves: tests/unit/test_cgroup_v2_files.py
(against the kernel's file layout).

Every test's groups live under a group of the test's own, killed and removed (and the mount unmounted)
at the end, on failure too. Needs root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from workers.sandbox.box import JOIN_CGROUPS
from workers.sandbox.cgroups import V2_CONTROLLERS, CgroupError, Cgroups, _keyed, _kill_and_remove, _mounts

pytestmark = pytest.mark.integration


def _procs(group: str) -> list[int]:
    with open(os.path.join(group, "cgroup.procs")) as f:
        return [int(p) for p in f.read().split()]


def _populated(group: str) -> bool:
    with open(os.path.join(group, "cgroup.events")) as f:
        return _keyed(f.read())["populated"] == 1


def _empty_and_remove(top: str) -> None:
    """The fixture's own teardown (not the code under test): kill everything under ``top`` with
    cgroup.kill, wait for cgroup.events to say it is empty, remove its groups deepest first."""
    if not os.path.isdir(top):
        return
    with open(os.path.join(top, "cgroup.kill"), "w") as f:
        f.write("1")
    deadline = time.monotonic() + 10
    while _populated(top) and time.monotonic() < deadline:
        time.sleep(0.01)
    for root, _, _ in os.walk(top, topdown=False):
        os.rmdir(root)


@pytest.fixture
def unified():
    """(mount point, a group of this test's own in it) on a fresh mount of the cgroup2 hierarchy."""
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    point = tempfile.mkdtemp(prefix="vterm-cgroup2-")
    # A cgroup2 mount sets the unified root's flags (favordynmods, nsdelegate...) for the whole
    # machine: this one asks for those already in force, so that it changes none.
    flags = next((sorted(o - {"rw", "ro"}) for _, t, o in _mounts() if t == "cgroup2"), [])
    r = subprocess.run(["mount", "-t", "cgroup2", *(["-o", ",".join(flags)] if flags else []), "none", point],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        os.rmdir(point)
        pytest.skip(f"cannot mount cgroup2 here: {r.stderr.strip()}")
    top = os.path.join(point, f"vterm-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(top)
        if not os.path.exists(os.path.join(top, "cgroup.kill")):
            pytest.skip("this kernel's cgroup2 has no cgroup.kill (before Linux 5.14)")
        yield point, top
    finally:
        try:
            _empty_and_remove(top)
        finally:
            subprocess.run(["umount", point], check=True)
            os.rmdir(point)


def _cgroups(unified) -> Cgroups:
    """The v2 groups of a backend under the test's group (the controllers' absence aside, as find() would
    lay them out for parent=<the test's group>)."""
    point, top = unified
    return Cgroups("b1", 2, {"": top}, os.path.join(point, "cgroup.procs"))


def _launch(dirs: list[str], script: str, count: int) -> tuple[subprocess.Popen, list[int]]:
    """Run ``script`` as the sandbox's launcher runs a shell: sh joins ``dirs`` first, then execs it.
    The script prints the pids it made, one a line (``count`` of them), and stays until killed."""
    p = subprocess.Popen(["/bin/sh", "-c", JOIN_CGROUPS, "vterm-sandbox", *dirs, "--", "/bin/sh", "-c", script],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids = []
    while len(pids) < count:
        line = p.stdout.readline()
        if not line:
            pytest.fail(f"launcher ended early (exit code {p.wait()}), pids {pids}")
        pids.append(int(line))
    p.stdout.close()
    return p, pids


# A shell's ways of leaving its parent: a setsid'ed daemon, a double fork (its parent, waited for, gone at
# once: it belongs to init), nohup; and the shell itself. Each prints its pid: four.
DAEMONS = ("setsid sh -c 'echo $$; exec sleep 300' & "
           "sh -c 'sh -c \"echo \\$\\$; exec sleep 301\" &'; "
           "nohup sh -c 'echo $$; exec sleep 302' 2>/dev/null & "
           "echo $$; exec sleep 303")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_v2_hierarchy_without_pids_memory_and_cpu_is_refused_naming_what_it_lacks(unified):
    point, _ = unified
    with open(os.path.join(point, "cgroup.controllers")) as f:
        offered = f.read().split()
    missing = [c for c in V2_CONTROLLERS if c not in offered]
    if not missing:
        pytest.skip(f"this host's cgroup2 offers {', '.join(V2_CONTROLLERS)}: nothing to refuse")
    with pytest.raises(CgroupError) as exc:
        Cgroups.find("b1", mounts=[(point, "cgroup2", {"rw"})], own={"": "/"})
    assert str(exc.value) == ("no usable cgroup controllers for pids, memory and cpu "
                              f"(v1 mounted: none; v2: at {point} without {', '.join(missing)})")


def test_a_session_ends_with_every_process_it_made_however_detached(unified):
    cg = _cgroups(unified)
    os.makedirs(cg.dirs("s1")[0])
    launcher, pids = _launch(cg.dirs("s1"), DAEMONS, 4)
    # Every one of them is in the session's group, counted by pids(), whoever its parent now is.
    assert sorted(cg.pids("s1")) == sorted(pids)
    assert cg.names() == ["s1"]
    assert os.path.exists(os.path.join(cg.dirs("s1")[0], "cgroup.kill"))  # destroy() kills through it

    assert cg.destroy("s1") is True
    assert launcher.wait(timeout=10) == -signal.SIGKILL
    assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]
    assert not os.path.exists(cg.dirs("s1")[0]) and cg.names() == []
    assert cg.destroy("s1") is True  # a group already gone: nothing to do


def test_jobs_are_child_groups_a_job_ends_alone_and_the_session_takes_the_rest(unified):
    cg = _cgroups(unified)
    session = cg.dirs("s1")[0]
    os.makedirs(session)
    shell, shell_pids = _launch(cg.dirs("s1"), "echo $$; exec sleep 300", 1)
    j1_dirs = cg.job_create("s1", "j1")
    j2_dirs = cg.job_create("s1", "j2")
    assert j1_dirs == [os.path.join(session, "job-j1")] and sorted(cg.job_names("s1")) == ["j1", "j2"]
    j1, j1_pids = _launch(j1_dirs, DAEMONS, 4)
    j2, j2_pids = _launch(j2_dirs, DAEMONS, 4)
    # A job may make groups of its own below its group: the session's end removes them first.
    inner = os.path.join(j2_dirs[0], "inner")
    os.mkdir(inner)
    deep, deep_pids = _launch([inner], "echo $$; exec sleep 300", 1)
    assert _procs(inner) == deep_pids
    assert sorted(cg.pids("s1")) == sorted(shell_pids + j1_pids + j2_pids + deep_pids)

    assert cg.job_destroy("s1", "j1") is True
    assert j1.wait(timeout=10) == -signal.SIGKILL and all(_gone(p) for p in j1_pids)
    assert cg.job_names("s1") == ["j2"] and not os.path.exists(j1_dirs[0])
    # The rest of the session is untouched.
    assert not any(_gone(p) for p in shell_pids + j2_pids + deep_pids)
    assert sorted(cg.pids("s1")) == sorted(shell_pids + j2_pids + deep_pids)

    assert cg.destroy("s1") is True
    for p in (shell, j2, deep):
        assert p.wait(timeout=10) == -signal.SIGKILL
    assert all(_gone(p) for p in shell_pids + j2_pids + deep_pids)
    assert not os.path.exists(session) and cg.names() == [] and cg.job_names("s1") == []


def test_kill_and_remove_ends_a_process_that_keeps_forking(unified):
    """A process that forks and exits in a loop has a new pid each moment: a kill by pid chases it,
    cgroup.kill (with the group's forks refused meanwhile) does not."""
    _, top = unified
    group = os.path.join(top, "hopper")
    os.mkdir(group)
    hopper, _ = _launch([group], "echo $$; exec perl -e 'while (1) { exit 0 if fork // 0 }'", 1)
    assert _populated(group)
    assert _kill_and_remove([group], version=2, timeout=10) is True
    hopper.wait(timeout=10)  # its first process exited at its first fork
    assert not os.path.exists(group)


def test_cpu_stat_of_a_real_v2_group_reads_as_usage_reads_it(unified):
    """cpu.stat's usage_usec is kept by the cgroup core for every group, controller or not: the one
    controller file of usage() that a real kernel gives here. It counts the group's subtree."""
    cg = _cgroups(unified)
    session = cg.dirs("s1")[0]
    os.makedirs(session)
    job = cg.job_create("s1", "j1")
    busy, _ = _launch(job, "echo $$; exec perl -e '1 while 1'", 1)
    deadline = time.monotonic() + 10
    while True:
        with open(os.path.join(session, "cpu.stat")) as f:
            stat = _keyed(f.read())
        if stat["usage_usec"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stat["usage_usec"] > 0, stat
    assert cg.usage("s1") is None  # no memory.current without the memory controller: no usage at all
    assert cg.destroy("s1") is True and busy.wait(timeout=10) == -signal.SIGKILL
