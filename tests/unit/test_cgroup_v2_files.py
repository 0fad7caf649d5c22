"""The cgroup v2 controller files of workers/sandbox/cgroups.py, against a temporary directory laid out
like the kernel's unified hierarchy (Documentation/admin-guide/cgroup-v2.rst): what Cgroups.find() picks,
what check() enables, what create() writes, what usage() reads.

This project's machines bind pids, memory and cpu to cgroup v1, so these files cannot be real here: the
parts of the v2 path a real cgroup2 mount does run are in tests/integration/test_cgroup_v2.py. What no
test here shows is a v2 kernel enforcing the limits written.
"""

from __future__ import annotations

import os
import re

import pytest

from workers.sandbox.cgroups import CgroupError, Cgroups, Limits, Usage

# A v2 root as the kernel shows it when the controllers are free for v2.
ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"


def _put(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _get(path) -> str:
    with open(path) as f:
        return f.read()


def _mkgroup(path, *, swap: bool = True) -> None:
    """A group as mkdir makes it under a parent whose subtree_control has +pids +memory +cpu: the files
    with their defaults (memory.swap.max only with swap accounting)."""
    files = {"cgroup.procs": "", "cgroup.controllers": "cpu memory pids\n", "cgroup.subtree_control": "",
             "pids.max": "max\n", "memory.max": "max\n", "cpu.weight": "100\n"}
    if swap:
        files["memory.swap.max"] = "max\n"
    for name, text in files.items():
        _put(os.path.join(path, name), text)


@pytest.fixture
def v2(tmp_path):
    """A v2 root offering the controllers, the only cgroup mount; this process at its root."""
    _put(tmp_path / "cgroup.controllers", ROOT_CONTROLLERS)
    _put(tmp_path / "cgroup.subtree_control", "")
    _put(tmp_path / "cgroup.procs", "")
    return tmp_path


def _find(root, parent: str = "") -> Cgroups:
    return Cgroups.find("b1", parent, mounts=[(str(root), "cgroup2", {"rw", "nsdelegate"})], own={"": "/"})


def test_find_takes_v2_when_its_hierarchy_offers_the_controllers(v2):
    cg = _find(v2)
    assert cg.version == 2 and cg.description == "cgroup v2"
    assert cg.dirs("s1") == [str(v2 / "vterm-b1" / "s1")]
    assert cg.job_dirs("s1", "j1") == [str(v2 / "vterm-b1" / "s1" / "job-j1")]
    assert _find(v2, "/delegated/unit").dirs("s1") == [str(v2 / "delegated" / "unit" / "vterm-b1" / "s1")]


def test_v1_wins_where_it_has_all_four_controllers(v2, tmp_path_factory):
    """A hybrid host (like this project's machines: v1 controllers, an empty unified hierarchy beside)."""
    v1 = tmp_path_factory.mktemp("v1")
    mounts = [(str(v1 / c), "cgroup", {"rw", c}) for c in ("pids", "memory", "cpu", "cpuacct")]
    cg = Cgroups.find("b1", mounts=mounts + [(str(v2), "cgroup2", {"rw"})], own={"": "/", "pids": "/svc"})
    assert cg.version == 1 and cg.dirs("s1")[0] == str(v1 / "pids" / "svc" / "vterm-b1" / "s1")


@pytest.mark.parametrize("offered, v1, lacks", [
    ("cpuset io hugetlb\n", [], "pids, memory, cpu"),
    ("cpu io pids\n", ["pids", "cpu"], "memory"),
    ("", ["pids", "memory", "cpu"], "pids, memory, cpu"),  # cpuacct missing: v1 is not whole either
])
def test_a_v2_hierarchy_without_the_controllers_is_refused_naming_what_it_lacks(v2, tmp_path, offered, v1, lacks):
    _put(v2 / "cgroup.controllers", offered)
    mounts = [(str(tmp_path / c), "cgroup", {"rw", c}) for c in v1] + [(str(v2), "cgroup2", {"rw"})]
    with pytest.raises(CgroupError) as exc:
        Cgroups.find("b1", mounts=mounts, own={"": "/"})
    have = ", ".join(sorted(v1)) or "none"
    assert str(exc.value) == (f"no usable cgroup controllers for pids, memory and cpu (v1 mounted: {have}; "
                              f"v2: at {v2} without {lacks})")


def test_no_cgroup_mount_at_all_is_refused():
    with pytest.raises(CgroupError, match=r"\(v1 mounted: none; v2: not mounted\)$"):
        Cgroups.find("b1", mounts=[], own={})


@pytest.mark.parametrize("parent", ["", "/delegated/unit"])
def test_check_enables_pids_memory_and_cpu_in_the_parent_and_the_backends_group(v2, parent):
    above = v2 / parent.lstrip("/")
    if parent:
        _mkgroup(above)
    cg = _find(v2, parent)
    cg.check()
    base = above / "vterm-b1"
    assert base.is_dir()
    # Each a write of the kernel's subtree_control syntax: space-separated "+<controller>".
    assert _get(above / "cgroup.subtree_control") == "+pids +memory +cpu"
    assert _get(base / "cgroup.subtree_control") == "+pids +memory +cpu"


def test_check_names_the_group_it_cannot_enable_the_controllers_in(v2):
    cg = _find(v2, "/delegated")
    os.makedirs(v2 / "delegated" / "cgroup.subtree_control")  # any write there fails (EISDIR)
    expected = f"cannot enable pids, memory and cpu in {v2 / 'delegated'}: "
    with pytest.raises(CgroupError, match="^" + re.escape(expected)):
        cg.check()


@pytest.mark.parametrize("weight, written", [(100, "100"), (50, "50"), (0, "1"), (-5, "1"), (10000, "10000"),
                                             (25000, "10000")])
def test_create_writes_the_limits_weight_clamped_to_1_to_10000(v2, weight, written):
    cg = _find(v2)
    _mkgroup(v2 / "vterm-b1" / "s1")
    dirs = cg.create("s1", Limits(processes=64, memory_bytes=512 << 20, cpu_weight=weight))
    d = v2 / "vterm-b1" / "s1"
    assert dirs == [str(d)]
    assert _get(d / "pids.max") == "64"
    assert _get(d / "memory.max") == str(512 << 20)
    assert _get(d / "memory.swap.max") == "0"  # the memory limit holds swap too: none of it
    assert _get(d / "cpu.weight") == written


def test_create_leaves_swap_alone_where_the_kernel_has_no_memory_swap_max(v2):
    cg = _find(v2)
    _mkgroup(v2 / "vterm-b1" / "s1", swap=False)  # swap accounting off
    cg.create("s1", Limits(processes=64, memory_bytes=1 << 30, cpu_weight=100))
    assert not (v2 / "vterm-b1" / "s1" / "memory.swap.max").exists()
    assert _get(v2 / "vterm-b1" / "s1" / "memory.max") == str(1 << 30)


# The files usage() reads, in the kernel's formats: memory.current a number; memory.stat, cpu.stat,
# memory.events and pids.events flat-keyed ("<key> <value>" a line).
MEMORY_STAT = """anon 1048576
file 8388608
kernel 262144
kernel_stack 32768
pagetables 65536
sock 0
shmem 4096
file_mapped 1048576
file_dirty 0
file_writeback 0
anon_thp 0
inactive_anon 524288
active_anon 524288
inactive_file 6291456
active_file 2097152
unevictable 0
slab_reclaimable 131072
slab_unreclaimable 65536
slab 196608
workingset_refault_anon 0
workingset_refault_file 12
pgfault 4242
pgmajfault 3
"""
CPU_STAT = """usage_usec 2500000
user_usec 2000000
system_usec 500000
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 0
nr_throttled 0
throttled_usec 0
nr_bursts 0
burst_usec 0
"""


def _usage_files(d, *, current: int, oom_kill: int = 0, pids_max: int = 0) -> None:
    _put(d / "memory.current", f"{current}\n")
    _put(d / "memory.stat", MEMORY_STAT)
    _put(d / "cpu.stat", CPU_STAT)
    _put(d / "pids.current", "7\n")
    # memory.events' own "max" (the memory limit reached) is not pids.events' "max" (a fork refused).
    _put(d / "memory.events", f"low 0\nhigh 0\nmax 9\noom {oom_kill}\noom_kill {oom_kill}\noom_group_kill 0\n")
    _put(d / "pids.events", f"max {pids_max}\n")


def test_usage_reads_memory_without_inactive_file_cpu_processes_and_limit_events(v2):
    cg = _find(v2)
    d = v2 / "vterm-b1" / "s1"
    _mkgroup(d)
    _usage_files(d, current=16 << 20, oom_kill=2, pids_max=3)
    assert cg.usage("s1") == Usage(memory_bytes=(16 << 20) - 6291456, cpu_seconds=2.5, processes=7,
                                   oom_kills=2, process_limit_hits=3)


def test_usage_is_never_below_zero_and_none_for_a_group_that_is_gone(v2):
    cg = _find(v2)
    d = v2 / "vterm-b1" / "s1"
    _mkgroup(d)
    _usage_files(d, current=4096)  # the page cache counted in inactive_file outgrew a sampled current
    assert cg.usage("s1").memory_bytes == 0
    assert cg.usage("gone") is None
    os.remove(d / "pids.events")
    assert cg.usage("s1") is None
