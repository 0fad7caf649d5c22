"""A sandbox per session: bubblewrap's namespaces, the user's own uid, the session's cgroup.

A shell starts as::

    sh -c <join the cgroups> <cgroup dirs> -- bwrap <namespaces, mounts> -- setpriv <uid> -- bash ...

- ``sh`` (as the backend, root) puts itself in the session's cgroups before anything else
  runs, so every process the session ever makes is counted, limited and killed with it;
- ``bwrap`` (Flatpak's sandbox, run as root) makes new PID, mount, IPC and UTS namespaces (and
  a network one with network ``none``): the system read-only, the user's home read-write, a
  private ``/tmp``, and nothing of the service (data directory, code, virtualenv, sockets);
- ``setpriv`` drops to the user's own uid/gid with no capabilities and no new privileges.

What the driver needs of a sandbox is the ``Box`` of each shell: the argv that launches it,
where the rc file and the hand-over files are inside and outside, and the cwd mapping.
``NoSandbox`` gives the same answers for shells run as the service (``VTERM_SANDBOX=off``).
Framework-free, like the driver.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import asdict, dataclass

from .cgroups import CgroupError, Cgroups, Limits, Usage

log = logging.getLogger(__name__)

SETPRIV = "/usr/bin/setpriv"
NSENTER = "/usr/bin/nsenter"
# Directories every sandbox has, made fresh for each shell.
SANDBOX_DIRS = ("/", "/home", "/tmp", "/var", "/var/tmp", "/dev", "/dev/shm", "/proc", "/run")
RUN_DIR = "/run/vterm"
INNER_RC = f"{RUN_DIR}/bashrc"
CONSOLE = "/dev/console"  # the session's terminal inside, as containers name it
INNER_X = f"{RUN_DIR}/x"  # hand-over files (environment, history), writable by the shell's user
# Read-only views of the system; a path that is a symlink on the host (merged /usr) stays one.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
JOIN_CGROUPS = ('while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; '
                'shift; exec "$@"')
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


class SandboxUnavailable(RuntimeError):
    """This host cannot run sandboxed shells; the message says what is missing and what to set."""


@dataclass
class SandboxSpec:
    """Who a session's shell runs as and within what limits (from the database, via the backend)."""

    uid: int
    gid: int
    username: str
    home: str  # the home directory on the host: the user's workspace, kept across sessions
    processes: int
    memory_bytes: int
    cpu_weight: int


def login_name(username: str, uid: int) -> str:
    """The name the shell's user has inside (/etc/passwd, $USER): the vterm username when it
    is a valid login name, else ``u<uid>``."""
    name = username.lower()
    return name if _SAFE_NAME.match(name) else f"u{uid}"


class Box:
    """One shell's sandbox as the driver sees it."""

    def __init__(self, *, name: str, host_dir: str, rc_host: str, spec: SandboxSpec | None,
                 cgroup_dirs: list[str], bwrap: list[str], token: str = "") -> None:
        self.name = name
        self.token = token  # this box, not a later one of the same name
        self.host_dir = host_dir
        self.rc_host = rc_host
        self.spec = spec
        self.cgroup_dirs = cgroup_dirs
        self._bwrap = bwrap

    # Paths the shell is told (inside) and the backend reads or writes (outside).
    @property
    def sandboxed(self) -> bool:
        return self.spec is not None

    @property
    def rc_path(self) -> str:
        return INNER_RC if self.sandboxed else self.rc_host

    @property
    def home(self) -> str:
        if not self.spec:
            return os.environ.get("HOME", "/")
        return f"/home/{login_name(self.spec.username, self.spec.uid)}"

    def env(self) -> dict[str, str]:
        """Variables that say who the shell's user is."""
        if not self.spec:
            return {}
        name = login_name(self.spec.username, self.spec.uid)
        return {"HOME": self.home, "USER": name, "LOGNAME": name}

    def exchange_file(self) -> tuple[str, str]:
        """A fresh name for a hand-over file: (path outside, path inside)."""
        token = secrets.token_hex(8)
        if not self.sandboxed:
            path = os.path.join(self.host_dir, f"x-{token}")
            return path, path
        return os.path.join(self.host_dir, "x", token), f"{INNER_X}/{token}"

    def has_dir(self, inner: str) -> bool:
        """Whether the shell would find this directory (a cwd asked for)."""
        if not self.sandboxed:
            return os.path.isdir(inner)
        inner = os.path.normpath(inner)
        home = self.home
        if inner == home or inner.startswith(home + "/"):
            return os.path.isdir(self.spec.home + inner[len(home):])
        if inner in SANDBOX_DIRS:
            return True  # made for each shell, empty
        return any(inner == d or inner.startswith(d + "/") for d in SYSTEM_DIRS) and os.path.isdir(inner)

    def inner_path(self, host: str) -> str:
        """The shell's view of a host path tmux reports (a pane's cwd)."""
        if self.sandboxed and (host == self.spec.home or host.startswith(self.spec.home + "/")):
            return self.home + host[len(self.spec.home):]
        return host

    def argv(self, inner: list[str], cwd: str) -> list[str]:
        if not self.sandboxed:
            return inner
        return (["/bin/sh", "-c", JOIN_CGROUPS, "vterm-sandbox", *self.cgroup_dirs, "--"]
                + self._bwrap + ["--chdir", cwd, "--", *self._setpriv(), *inner])


    def job_argv(self, inner: list[str], *, shell_pid: int, cgroup_dirs: list[str]) -> list[str]:
        """A job beside the shell: in the shell's namespaces (entered through ``shell_pid``, its
        bash), as its user, in the job's own ``cgroup_dirs`` (children of the session's). It starts
        at the sandbox's root: ``inner`` enters its directory once it runs as the user."""
        if not self.sandboxed:
            return inner
        namespaces = ["--pid", "--mount", "--ipc", "--uts"] + (["--net"] if "--unshare-net" in self._bwrap else [])
        # nsenter forks (a PID namespace holds only its children) and waits: its exit code is the job's.
        return (["/bin/sh", "-c", JOIN_CGROUPS, "vterm-job", *cgroup_dirs, "--",
                 NSENTER, f"--target={shell_pid}", *namespaces, "--root", "--wdns=/", "--",
                 *self._setpriv(), *inner])

    def _setpriv(self) -> list[str]:
        s = self.spec
        return [SETPRIV, f"--reuid={s.uid}", f"--regid={s.gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


class NoSandbox:
    """Shells run as the service's own user (VTERM_SANDBOX=off): what vterm did before."""

    mode = "off"

    def __init__(self, state_dir: str, rc_host: str) -> None:
        self.state_dir = state_dir
        self.rc_host = rc_host

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass

    def warm(self) -> None:
        pass

    def prepare(self, name: str, spec: SandboxSpec | None) -> Box:
        return self.find(name)

    def find(self, name: str) -> Box:
        return Box(name=name, host_dir=self.state_dir, rc_host=self.rc_host, spec=None, cgroup_dirs=[],
                   bwrap=[])

    def release(self, name: str, token: str | None = None) -> bool:
        return True

    def names(self) -> list[str]:
        return []

    def usage(self, name: str) -> Usage | None:
        return None

    def cpu_seconds(self, name: str) -> float | None:
        return None

    def pids(self, name: str) -> list[int]:
        return []

    def job_create(self, name: str, job: str) -> list[str]:
        return []

    def job_destroy(self, name: str, job: str) -> bool:
        return True

    def jobs_sweep(self, name: str) -> None:
        pass


class Sandbox:
    """The sandboxes of one backend's shells. State per shell lives in ``state_dir/<name>/``
    (root-only), so that a worker that restarts finds the boxes of the shells it adopts."""

    def __init__(self, *, backend_id: str, state_dir: str, rc_host: str, network: str = "host",
                 cgroup_parent: str = "", service_uid: int | None = None,
                 bwrap: str = "/usr/bin/bwrap") -> None:
        if network not in ("host", "none"):
            raise SandboxUnavailable(f"VTERM_SANDBOX_NETWORK must be host or none, not {network!r}")
        self.backend_id = backend_id
        self.state_dir = state_dir
        self.rc_host = rc_host
        self.network = network
        self.cgroup_parent = cgroup_parent
        self.bwrap = bwrap
        self.service_uid = os.getuid() if service_uid is None else service_uid
        self._cgroups: Cgroups | None = None
        self._lock = threading.Lock()
        # Two stacks on one machine may both have a backend-1: their groups differ by data directory,
        # so that one backend's start-up sweep never ends the other's shells.
        self._group = f"{backend_id}-{hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:8]}"

    @property
    def mode(self) -> str:
        cg = self._cgroups.description if self._cgroups else "cgroups"
        return f"bubblewrap, {cg}, network {self.network}"

    def check(self) -> None:
        """Raise SandboxUnavailable naming what this host lacks (the backend then refuses to start)."""
        missing = []
        for tool, path, pkg in (("bwrap", self.bwrap, "bubblewrap"), ("setpriv", SETPRIV, "util-linux"),
                                ("nsenter", NSENTER, "util-linux")):
            if not os.access(path, os.X_OK):
                missing.append(f"{tool} at {path} (Debian package {pkg})")
        if os.geteuid() != 0:
            missing.append("root: the backend must run as root to give each user's shells a uid of their own "
                           "and namespaces (it is not)")
        try:
            self._cgroups = Cgroups.find(self._group, self.cgroup_parent)
            self._cgroups.check()
        except CgroupError as exc:
            missing.append(f"writable cgroups: {exc}")
        if missing:
            self.close()
            raise SandboxUnavailable("cannot sandbox shells on this host; missing: " + "; ".join(missing)
                                     + ". Install or grant them, or set VTERM_SANDBOX=off to run shells "
                                     "as the service's own user, without isolation (docs/security.md).")

    def close(self) -> None:
        """The backend stops: its own cgroup goes when no session's group is left in it (a
        refused or failed start leaves nothing behind; running shells keep theirs for adoption)."""
        if self._cgroups is not None:
            self._cgroups.remove()

    @property
    def cgroups(self) -> Cgroups:
        if self._cgroups is None:
            self._cgroups = Cgroups.find(self._group, self.cgroup_parent)
        return self._cgroups

    # -- shells ---------------------------------------------------------------------------

    def warm(self) -> None:
        """Called as a shell start is asked for: what its launcher will wait for begins now
        (Cgroups.warm), beside the rest of the start."""
        self.cgroups.warm()

    def prepare(self, name: str, spec: SandboxSpec | None) -> Box:
        """Make a new shell's box: its cgroup with the limits, its home, its files."""
        if spec is None:
            raise SandboxUnavailable("a sandboxed shell needs its user's identity and limits")
        if spec.uid in (0, self.service_uid) or spec.gid in (0, self.service_uid):
            raise SandboxUnavailable(f"refusing uid/gid {spec.uid}/{spec.gid}: the root's or the service's")
        with self._lock:
            self._release(name)  # a leftover of the same name (a crash between two starts)
            self._make(name, spec)
        return self.find(name)

    def _make(self, name: str, spec: SandboxSpec) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        host_dir = os.path.join(self.state_dir, name)
        os.mkdir(host_dir, 0o700)
        with open(os.path.join(host_dir, "box.json"), "w") as f:
            json.dump({**asdict(spec), "token": secrets.token_hex(8)}, f)
        _ensure_home(spec)
        x = os.path.join(host_dir, "x")
        os.mkdir(x, 0o700)
        os.chown(x, spec.uid, spec.gid)
        _write_identity(host_dir, spec)
        self.cgroups.create(name, Limits(processes=spec.processes, memory_bytes=spec.memory_bytes,
                                         cpu_weight=spec.cpu_weight))

    def find(self, name: str) -> Box | None:
        host_dir = os.path.join(self.state_dir, name)
        try:
            with open(os.path.join(host_dir, "box.json")) as f:
                saved = json.load(f)
            token = saved.pop("token", "")
            spec = SandboxSpec(**saved)
        except (OSError, ValueError, TypeError):
            return None
        return Box(name=name, host_dir=host_dir, rc_host=self.rc_host, spec=spec, token=token,
                   cgroup_dirs=self.cgroups.dirs(name), bwrap=self._bwrap_args(host_dir, spec))

    def release(self, name: str, token: str | None = None) -> bool:
        """End everything the shell started (its whole cgroup) and remove its box. True when
        nothing is left. ``token``: only if the box is still that one (not a newer shell's)."""
        with self._lock:
            if token is not None:
                box = self.find(name)
                if box is not None and box.token != token:
                    return True
            return self._release(name)

    def _release(self, name: str) -> bool:
        ok = self.cgroups.destroy(name)
        if not ok:
            log.warning("sandbox %s: processes left after the kill", name)
        shutil.rmtree(os.path.join(self.state_dir, name), ignore_errors=True)
        return ok

    def names(self) -> list[str]:
        """Every shell this backend has a box or a cgroup for."""
        try:
            boxes = set(os.listdir(self.state_dir))
        except FileNotFoundError:
            boxes = set()
        return sorted(boxes | set(self.cgroups.names()))

    def usage(self, name: str) -> Usage | None:
        return self.cgroups.usage(name)

    def cpu_seconds(self, name: str) -> float | None:
        return self.cgroups.cpu_seconds(name)

    def pids(self, name: str) -> list[int]:
        return self.cgroups.pids(name)

    def job_create(self, name: str, job: str) -> list[str]:
        """A job's own group inside the session's (workers/jobs.py): its directories."""
        return self.cgroups.job_create(name, job)

    def job_destroy(self, name: str, job: str) -> bool:
        """End every process of the job (however it detached) and remove its group."""
        return self.cgroups.job_destroy(name, job)

    def jobs_sweep(self, name: str) -> None:
        """End the jobs a worker before this one left in the shell's group."""
        for job in self.cgroups.job_names(name):
            self.cgroups.job_destroy(name, job)

    def _bwrap_args(self, host_dir: str, spec: SandboxSpec) -> list[str]:
        home = f"/home/{login_name(spec.username, spec.uid)}"
        args = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "vterm", "--as-pid-1"]
        if self.network == "none":
            args.append("--unshare-net")
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        args += ["--ro-bind", os.path.join(host_dir, "passwd"), "/etc/passwd",
                 "--ro-bind", os.path.join(host_dir, "group"), "/etc/group",
                 "--proc", "/proc", "--dev", "/dev",
                 # The pane's terminal (bwrap's stdin, from the host's /dev/pts, which the sandbox's own
                 # /dev/pts does not show) by a name: `tty` and programs that reopen it find it there.
                 "--dev-bind", "/proc/self/fd/0", CONSOLE,
                 "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm",
                 "--dir", "/var", "--perms", "1777", "--tmpfs", "/var/tmp",
                 "--dir", "/home", "--bind", spec.home, home,
                 # Parents bwrap makes on its own would be root-only (0700).
                 "--dir", "/run", "--dir", RUN_DIR,
                 "--ro-bind", self.rc_host, INNER_RC, "--bind", os.path.join(host_dir, "x"), INNER_X]
        return args


def _ensure_home(spec: SandboxSpec) -> None:
    """The user's home: made once, theirs alone; its parent only lets its owners through."""
    parent = os.path.dirname(spec.home)
    os.makedirs(parent, mode=0o711, exist_ok=True)
    try:
        os.mkdir(spec.home, 0o700)
    except FileExistsError:
        st = os.stat(spec.home)
        if (st.st_uid, st.st_gid) == (spec.uid, spec.gid):
            return
    os.chown(spec.home, spec.uid, spec.gid)


def _write_identity(host_dir: str, spec: SandboxSpec) -> None:
    """/etc/passwd and /etc/group as the shell sees them: the system's, plus its user."""
    name = login_name(spec.username, spec.uid)
    home = f"/home/{name}"
    passwd = f"{name}:x:{spec.uid}:{spec.gid}:vterm user {spec.username}:{home}:/bin/bash"
    for fname, line in (("passwd", passwd), ("group", f"{name}:x:{spec.gid}:")):
        try:
            with open(f"/etc/{fname}") as f:
                system = [ln for ln in f.read().splitlines() if ln and not ln.startswith(f"{name}:")]
        except OSError:
            system = []
        with open(os.path.join(host_dir, fname), "w") as f:
            f.write("\n".join(system + [line]) + "\n")
        os.chmod(os.path.join(host_dir, fname), 0o644)
