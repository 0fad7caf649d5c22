"""One cgroup per session: its limits (processes, memory, CPU share), its accounting, and
the way a session ends (every process in it is killed, however it detached).

cgroup v1 (a hierarchy per controller, as on this project's machines: pids, memory, cpu,
cpuacct) and v2 (one unified hierarchy) behind one small interface. Each backend keeps
its sessions' groups under ``<parent>/vterm-<backend>/``, where ``<parent>`` is the
worker's own cgroup (what a container or systemd unit delegates) unless configured.
Framework-free: the tmux driver uses it through workers/sandbox/box.py.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass

V1_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct")
V2_CONTROLLERS = ("pids", "memory", "cpu")


class CgroupError(RuntimeError):
    """The host's cgroups cannot be used as asked (message names what is missing)."""


@dataclass(frozen=True)
class Limits:
    processes: int  # pids.max
    memory_bytes: int  # memory limit, swap included where it can be limited
    cpu_weight: int  # 1..10000, 100 = an equal share (cgroup v2's cpu.weight scale)


@dataclass
class Usage:
    memory_bytes: int
    cpu_seconds: float
    processes: int
    oom_kills: int
    process_limit_hits: int


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


# A group removed meanwhile (a job's own end and its session's can race): ENOENT before the open,
# ENODEV when it went while open.
GONE = (errno.ENOENT, errno.ENODEV)


def _procs(group: str) -> list[int]:
    """The processes in one group, none if it is gone."""
    try:
        return [int(p) for p in _read(os.path.join(group, "cgroup.procs")).split()]
    except OSError as exc:
        if exc.errno in GONE:
            return []
        raise


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, its super block's options) of every cgroup file system this process sees."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], set(rfields[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """This process' cgroup path per v1 controller, and under '' its v2 path."""
    out = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


class Cgroups:
    """The cgroups of one backend's sessions."""

    def __init__(self, backend_id: str, version: int, roots: dict[str, str], own_procs: str) -> None:
        """The groups of ``backend_id``'s sessions: ``vterm-<backend_id>`` under each of ``roots``
        (v1: a directory per controller of V1_CONTROLLERS; v2: one, under ''). ``own_procs``: the
        worker's own cgroup.procs (warm). Cgroups.find() finds them on this host."""
        self.backend_id = backend_id
        self.version = version
        self._base = {c: os.path.join(root, f"vterm-{backend_id}") for c, root in roots.items()}
        self._own_procs = own_procs
        self._warming = threading.Lock()

    @classmethod
    def find(cls, backend_id: str, parent: str = "", *,
             mounts: list[tuple[str, str, set[str]]] | None = None, own: dict[str, str] | None = None) -> Cgroups:
        """The backend's groups on this host's cgroups: v1 when pids, memory, cpu and cpuacct each have
        a hierarchy, else v2 when its hierarchy offers pids, memory and cpu (raises CgroupError).
        ``parent``: where the groups go, default the worker's own cgroup (v1) or the hierarchy's root
        (v2). ``mounts``, ``own``: the cgroup mounts and this process' groups, as _mounts() and
        _own_paths() read them from /proc."""
        mounts = _mounts() if mounts is None else mounts
        own = _own_paths() if own is None else own
        v1 = {}
        for point, fstype, opts in mounts:
            if fstype == "cgroup":
                for c in V1_CONTROLLERS:
                    if c in opts:
                        v1[c] = point
        unified = next((p for p, t, _ in mounts if t == "cgroup2"), None)
        if all(c in v1 for c in V1_CONTROLLERS):
            return cls(backend_id, 1,
                       {c: os.path.join(v1[c], (parent or own.get(c, "/")).lstrip("/")) for c in V1_CONTROLLERS},
                       os.path.join(v1["pids"], own.get("pids", "/").lstrip("/"), "cgroup.procs"))
        offered = _read(f"{unified}/cgroup.controllers").split() if unified else []
        missing = [c for c in V2_CONTROLLERS if c not in offered]
        if unified and not missing:
            # v2 allows controllers only for groups with no processes of their own: the backend's
            # groups hang off the delegated parent (default: the hierarchy's root, writable by root).
            return cls(backend_id, 2, {"": os.path.join(unified, parent.lstrip("/"))},
                       os.path.join(unified, own.get("", "/").lstrip("/"), "cgroup.procs"))
        have = ", ".join(sorted(v1)) or "none"
        v2 = f"at {unified} without {', '.join(missing)}" if unified else "not mounted"
        raise CgroupError(f"no usable cgroup controllers for pids, memory and cpu (v1 mounted: {have}; v2: {v2})")

    @property
    def description(self) -> str:
        return f"cgroup v{self.version}"

    def warm(self) -> None:
        """Start now, in the background, the wait that a shell's launcher pays moments later when
        it moves itself into its session's groups. Any move into a cgroup takes a lock shared by
        all hierarchies whose first taking in a while waits for an RCU grace period (~10 ms, most
        of a sandboxed start); a move of this process into the group it is already in takes it
        too, so the launcher finds that wait under way or over. A missed warm-up costs nothing."""
        if not self._warming.acquire(blocking=False):
            return  # one is under way

        def move_self() -> None:
            try:
                _write(self._own_procs, str(os.getpid()))
            except OSError:
                pass
            finally:
                self._warming.release()
        threading.Thread(target=move_self, name="vterm-cgroup-warm", daemon=True).start()

    # -- the backend's own group ----------------------------------------------------------

    def check(self) -> None:
        """Create the backend's group (raises CgroupError naming what failed)."""
        for base in self._base.values():
            try:
                os.makedirs(base, exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {base}: {exc.strerror}") from exc
        if self.version == 2:
            base = self._base[""]
            for path in (os.path.dirname(base), base):
                try:
                    _write(os.path.join(path, "cgroup.subtree_control"),
                           " ".join(f"+{c}" for c in V2_CONTROLLERS))
                except OSError as exc:
                    raise CgroupError(f"cannot enable pids, memory and cpu in {path}: {exc.strerror}") \
                        from exc

    def remove(self) -> None:
        """Remove the backend's own group (once its sessions' groups are gone)."""
        for base in self._base.values():
            try:
                os.rmdir(base)
            except OSError:
                pass  # still holds a session's group, or already gone

    def names(self) -> list[str]:
        base = next(iter(self._base.values()))
        try:
            return [d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))]
        except FileNotFoundError:
            return []

    # -- a session's group --------------------------------------------------------------------

    def dirs(self, name: str) -> list[str]:
        """The session's group directories: a launcher writes its pid into each cgroup.procs."""
        return [os.path.join(base, name) for base in self._base.values()]

    def create(self, name: str, limits: Limits) -> list[str]:
        dirs = self.dirs(name)
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        if self.version == 1:
            g = {c: os.path.join(base, name) for c, base in self._base.items()}
            _write(f"{g['pids']}/pids.max", str(limits.processes))
            _write(f"{g['memory']}/memory.limit_in_bytes", str(limits.memory_bytes))
            if os.path.exists(f"{g['memory']}/memory.memsw.limit_in_bytes"):
                try:
                    _write(f"{g['memory']}/memory.memsw.limit_in_bytes", str(limits.memory_bytes))
                except OSError:
                    pass  # swap accounting off: there is no swap to limit
            # v1 shares: 1024 is the default share; weight 100 maps to it.
            _write(f"{g['cpu']}/cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
        else:
            d = dirs[0]
            _write(f"{d}/pids.max", str(limits.processes))
            _write(f"{d}/memory.max", str(limits.memory_bytes))
            if os.path.exists(f"{d}/memory.swap.max"):
                _write(f"{d}/memory.swap.max", "0")
            _write(f"{d}/cpu.weight", str(min(10000, max(1, limits.cpu_weight))))
        return dirs

    def pids(self, name: str) -> list[int]:
        """Every process of the session's group, its jobs' groups included."""
        out = []
        for d in _tree(self.dirs(name)[0]):
            out += _procs(d)
        return out

    # -- a job's group: a child of its session's, so that the session's limits hold it and a kill
    # -- of the job ends its whole tree (however it detached), and no more ----------------------

    def job_dirs(self, name: str, job: str) -> list[str]:
        return [os.path.join(d, f"job-{job}") for d in self.dirs(name)]

    def job_create(self, name: str, job: str) -> list[str]:
        dirs = self.job_dirs(name, job)
        for d in dirs:
            os.mkdir(d)
        return dirs

    def job_names(self, name: str) -> list[str]:
        try:
            return [d[4:] for d in os.listdir(self.dirs(name)[0]) if d.startswith("job-")]
        except FileNotFoundError:
            return []

    def job_destroy(self, name: str, job: str, timeout: float = 5.0) -> bool:
        """Kill every process of the job's group and remove it. True when nothing is left."""
        return _kill_and_remove(self.job_dirs(name, job), self.version, timeout)

    def _cpu_seconds(self, name: str) -> float:
        if self.version == 1:
            return int(_read(f"{os.path.join(self._base['cpuacct'], name)}/cpuacct.usage")) / 1e9
        return _keyed(_read(f"{self.dirs(name)[0]}/cpu.stat")).get("usage_usec", 0) / 1e6

    def cpu_seconds(self, name: str) -> float | None:
        """The CPU the session's group has used, one file read: what tells whether anything of it ran."""
        return _unless_gone(lambda: self._cpu_seconds(name))

    def usage(self, name: str) -> Usage | None:
        return _unless_gone(lambda: self._usage(name))

    def _usage(self, name: str) -> Usage:
        cpu = self._cpu_seconds(name)
        if self.version == 1:
            g = {c: os.path.join(base, name) for c, base in self._base.items()}
            stat = _keyed(_read(f"{g['memory']}/memory.stat"))
            mem = int(_read(f"{g['memory']}/memory.usage_in_bytes")) - stat.get("total_inactive_file", 0)
            procs = int(_read(f"{g['pids']}/pids.current"))
            ooms = _keyed(_read(f"{g['memory']}/memory.oom_control")).get("oom_kill", 0)
            hits = _keyed(_read(f"{g['pids']}/pids.events")).get("max", 0)
        else:
            d = self.dirs(name)[0]
            stat = _keyed(_read(f"{d}/memory.stat"))
            mem = int(_read(f"{d}/memory.current")) - stat.get("inactive_file", 0)
            procs = int(_read(f"{d}/pids.current"))
            ooms = _keyed(_read(f"{d}/memory.events")).get("oom_kill", 0)
            hits = _keyed(_read(f"{d}/pids.events")).get("max", 0)
        return Usage(memory_bytes=max(0, mem), cpu_seconds=cpu, processes=procs, oom_kills=ooms,
                     process_limit_hits=hits)

    def destroy(self, name: str, timeout: float = 5.0) -> bool:
        """Kill every process in the session's group (its jobs' too), then remove it. True when nothing is left."""
        return _kill_and_remove(self.dirs(name), self.version, timeout)


def _unless_gone(read):
    """``read()``, or None when the group is gone or a file of it does not read as a number."""
    try:
        return read()
    except ValueError:
        return None
    except OSError as exc:
        if exc.errno in GONE:
            return None
        raise


def _tree(top: str) -> list[str]:
    """``top`` and the groups below it, deepest first (the order they can be removed in)."""
    out = []
    for root, subdirs, _ in os.walk(top, topdown=False):
        out.append(root)
    return out


def _kill_and_remove(dirs: list[str], version: int, timeout: float) -> bool:
    """Kill every process in the groups ``dirs`` (one per hierarchy) and their child groups, then
    remove them all. True when nothing is left."""
    if not any(os.path.isdir(d) for d in dirs):
        return True
    deadline = time.monotonic() + timeout
    if version == 2 and os.path.exists(f"{dirs[0]}/cgroup.kill"):
        try:
            _write(f"{dirs[0]}/cgroup.kill", "1")
        except OSError:
            pass
    while True:
        pids = []
        for d in _tree(dirs[0]):
            pids += _procs(d)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    ok = True
    for top in dirs:
        for d in _tree(top):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: the kernel has not let go of the last (killed) task yet.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        ok = False
                        break
                    time.sleep(0.01)
    return ok
