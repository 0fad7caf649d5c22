"""`make run` as users run it: `python -m vterm_project.devstack` (supervisord in the foreground),
at the default settings, on free ports and a data dir of its own. While commands flow through the
REST API, each kind of process it started is killed with SIGKILL (the OOM killer's way): the stack
stays up, supervisord starts the process again (a new pid), sessions keep working and every
command that got a 201 ends in a final state. A backend that cannot start any more is given up
after a bounded number of tries, named by /readyz and the pool, and the others run on. Ctrl-C
stops every process; the shells live on in tmux until the test ends them.

The times measured (kill to new pid, kill to serving again) are written to
test-artifacts/make_run_restarts.json and quoted in docs/deploy.md; nothing here asserts on them.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Self

import httpx
import pytest
from supervisor.xmlrpc import SupervisorTransport

from tests.conftest import ARTIFACTS, Api
from vterm_project.devstack import ROOT, free_port
from workers.sandbox.cleanup import remove_backend_groups
from workers.tmux.pool import all_server_sockets, server_sockets

from .harness import FINAL, settle_commands, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKENDS = ["backend-1", "backend-2"]
DEV_SECRET_KEY = "insecure-dev-only-change-me"  # vterm_project/settings.py's default


class MakeRun:
    """The entry point `make run` runs, in a process group of its own, its output in a file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port, self.flower_port, self.redis_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out_path = data_dir.parent / f"{data_dir.name}.out"
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "SECRET_KEY") and not k.startswith(("VTERM_", "PYTEST_"))}
        env.update(PORT=str(self.port), FLOWER_PORT=str(self.flower_port), VTERM_REDIS_PORT=str(self.redis_port),
                   VTERM_DATA_DIR=str(data_dir), VTERM_BACKENDS=str(len(BACKENDS)))
        # Append mode: supervisord and its programs open it so too (one offset each would overwrite).
        self.out = open(self.out_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "vterm_project.devstack"], cwd=ROOT, env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.seen_pids: set[int] = {self.proc.pid}

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def printed(self, label: str) -> str:
        line = next(ln for ln in self.output().splitlines() if ln.strip().startswith(label))
        return line.split(label, 1)[1].strip()

    def rpc(self):
        conf = configparser.RawConfigParser()
        conf.read(self.data_dir / "supervisord.conf")
        ctl = conf["supervisorctl"]
        transport = SupervisorTransport(ctl["username"], ctl["password"], ctl["serverurl"])
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def info(self) -> dict[str, dict]:
        infos = {i["name"]: i for i in self.rpc().getAllProcessInfo()}
        self.seen_pids |= {i["pid"] for i in infos.values() if i["pid"]}
        return infos

    def pids(self) -> dict[str, int]:
        return {name: i["pid"] for name, i in self.info().items()}

    def ready(self) -> dict | None:
        try:
            r = httpx.get(self.url + "/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        body = r.json() if r.status_code in (200, 503) else None
        return body if body and r.status_code == 200 else None

    def tmux_server_pid(self, backend_id: str) -> int | None:
        """The pid of the backend's first tmux server (it holds every shell of these tests)."""
        socks = server_sockets(self.data_dir / "tmux" / backend_id)
        if not socks:
            return None
        out = subprocess.run(["tmux", "-S", str(socks[0]), "display-message", "-p", "#{pid}"],
                             capture_output=True, text=True, check=False)
        return int(out.stdout) if out.returncode == 0 and out.stdout.strip().isdigit() else None

    def kill_tmux_servers(self) -> None:
        for sock in all_server_sockets(self.data_dir):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)
        remove_backend_groups(self.data_dir)  # and what the shells' sandboxes held

    def processes_of_this_stack(self) -> list[tuple[int, str]]:
        """Every process on the machine with this data dir in its environment: (pid, command line)."""
        marker = f"VTERM_DATA_DIR={self.data_dir}".encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                continue  # gone meanwhile, or not ours to read
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.kill_tmux_servers()
        for pid in self.seen_pids:  # whatever a failed test left behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.out.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("make-run")
    mr = MakeRun(data_dir)
    try:
        wait_for(lambda: "API token:" in mr.output() or mr.proc.poll() is not None, 180, "the printed token")
        assert mr.proc.poll() is None, mr.output()[-3000:]
        wait_for(lambda: (b := mr.ready()) and b["checks"]["backends"] >= len(BACKENDS), 180,
                 "/readyz with every backend")
        mr.api = Api(mr.url, mr.printed("API token:"))
        yield mr
    finally:
        mr.stop()
        (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "logs" / "make-run.out").write_text(mr.output())


class Load:
    """Short commands into the sessions, round-robin, until stopped; keeps what got a 201."""

    def __init__(self, api: Api, sids: list[str]) -> None:
        self.api, self.sids = api, sids
        self.acked: list[dict] = []
        self.refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(base_url=self.api.http.base_url, headers=dict(self.api.http.headers), timeout=15) as http:
            while not self._stop.is_set():
                sid = self.sids[i % len(self.sids)]
                try:
                    r = http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo load-{i}"})
                    if r.status_code == 201:
                        self.acked.append(r.json())
                    else:
                        self.refused[str(r.status_code)] = self.refused.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    self.refused[exc.__class__.__name__] = self.refused.get(exc.__class__.__name__, 0) + 1
                    time.sleep(0.1)
                i += 1
                time.sleep(0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def _session_works(api: Api, sid: str, word: str) -> bool:
    try:
        r = api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo {word}", "wait": 20},
                          timeout=30)
    except httpx.HTTPError:
        return False
    return r.status_code == 201 and r.json()["status"] == "succeeded" and r.json()["output"] == f"{word}\n"


def _sessions_on_each_backend(api: Api) -> dict[str, str]:
    """backend id -> a session placed there (placement is least-loaded: new sessions alternate)."""
    placed: dict[str, str] = {}
    extra = []
    for _ in range(20):
        s = api.create_session(name="make-run")
        if s["backend"] in placed:
            extra.append(s["id"])
        else:
            placed[s["backend"]] = s["id"]
        if len(placed) == len(BACKENDS):
            break
    for sid in extra:
        api.http.delete(f"/api/v1/sessions/{sid}/")
    assert set(placed) == set(BACKENDS), placed
    return placed


TIMES: dict[str, dict] = {}

# The line each process writes when it is up again (counted in its own prefixed lines).
UP_LINE = {"web": "Listening on TCP address", "web-2": "Listening on TCP address", "redis": "Ready to accept connections", "flower": "Visit me at",
           "beat": "-------------- control@", "scaler": "local scaler: following",
           "backend-1": "backend backend-1 up:"}


def _up_lines(stack: MakeRun, kind: str) -> int:
    return sum(1 for line in stack.output().splitlines()
               if line.split(" | ", 1)[0].strip() == kind and UP_LINE[kind] in line)


def _record(kind: str, **figures) -> None:
    TIMES[kind] = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "make_run_restarts.json").write_text(json.dumps(TIMES, indent=2))
    print(f"\n{kind}: {TIMES[kind]}")


def test_make_run_prints_its_logins_and_keeps_its_secrets(stack):
    out = stack.output()
    for label in ("admin login:", "Flower login:", "API token:", f"http://127.0.0.1:{stack.port}/"):
        assert label in out, label
    secret_key = (stack.data_dir / "secret-key").read_text().strip()
    redis_password = (stack.data_dir / "redis-password").read_text().strip()
    flower_password = (stack.data_dir / "flower-password").read_text().strip()
    for name in ("secret-key", "redis-password", "flower-password", "admin-password", "supervisord.conf"):
        assert (stack.data_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert redis_password not in out  # the printed Redis URL hides it
    pids = stack.pids()
    assert set(pids) == {"redis", "web", "web-2", *BACKENDS, "beat", "scaler", "flower"} and all(pids.values()), pids
    for name, pid in pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        for secret in (secret_key, redis_password, flower_password):
            assert secret.encode() not in cmdline, name
        if name != "redis":
            assert f"SECRET_KEY={secret_key}".encode() in environ, name
            assert f"SECRET_KEY={DEV_SECRET_KEY}".encode() not in environ, name
            assert f"REDIS_URL=redis://:{redis_password}@127.0.0.1:{stack.redis_port}/0".encode() in environ, name
    # The private Redis refuses a client without the password.
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis_port, socket_timeout=5).ping()
    # Nor can a shell of make run's reach them: its sandbox hides the files and the processes, and
    # Redis (on the host's network) wants the password it cannot read.
    s = stack.api.create_session(name="probe")
    try:
        probe = stack.api.run(s["id"], (
            f"cat {stack.data_dir}/secret-key {stack.data_dir}/redis-password 2>&1 | grep -c 'No such file'; "
            "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '^SECRET_KEY='; "
            f"exec 3<>/dev/tcp/127.0.0.1/{stack.redis_port} && printf 'PING\\r\\n' >&3 && "
            "read -t 5 -r reply <&3; echo \"$reply\""))
        assert probe["status"] == "succeeded", probe
        files, environs, reply = probe["output"].splitlines()
        assert (files, environs) == ("2", "0"), probe["output"]
        assert reply.startswith("-NOAUTH"), probe["output"]
        assert secret_key not in probe["output"] and redis_password not in probe["output"]
    finally:
        stack.api.http.delete(f"/api/v1/sessions/{s['id']}/")
    # Flower asks for its login.
    flower = f"http://127.0.0.1:{stack.flower_port}/"
    assert httpx.get(flower, timeout=10).status_code == 401
    assert httpx.get(flower, auth=("admin", flower_password), timeout=10).status_code == 200
    # One output stream, each line naming its process.
    for name in ("web", "web-2", "backend-1", "redis", "flower"):
        assert any(line.startswith(f"{name} ") and " | " in line for line in out.splitlines()), name
        if name.startswith("web"):  # both on the one port
            assert _up_lines(stack, name) == 1, name


@pytest.mark.parametrize("kind", ["web", "web-2", "backend-1", "beat", "redis", "flower", "scaler", "tmux"])
def test_a_killed_process_is_restarted_and_nothing_accepted_is_lost(stack, kind):
    placed = _sessions_on_each_backend(stack.api)
    sids = list(placed.values())
    for sid in sids:
        wait_for(lambda sid=sid: _session_works(stack.api, sid, "before"), 60, f"session {sid} to work")
    before = stack.pids()
    with Load(stack.api, sids) as load:
        wait_for(lambda: len(load.acked) >= 5, 60, "commands to flow")
        if kind == "tmux":
            old = stack.tmux_server_pid("backend-2")
            assert old
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new = wait_for(lambda: (p := stack.tmux_server_pid("backend-2")) not in (None, old) and p, 120,
                           "a new tmux server for backend-2")
        else:
            old, ups = before[kind], _up_lines(stack, kind)
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new = wait_for(lambda: (p := stack.pids()[kind]) not in (0, old) and p, 120, f"a new {kind} process")
        restarted_s = time.monotonic() - t0
        if kind != "tmux":
            wait_for(lambda: _up_lines(stack, kind) > ups, 120, f"the new {kind} to say it is up")
        up_s = time.monotonic() - t0
        # Serving again: ready, and a command succeeds in every session.
        wait_for(lambda: (b := stack.ready()) and b["checks"]["backends"] >= len(BACKENDS), 120, "/readyz")
        for sid in sids:
            wait_for(lambda sid=sid: _session_works(stack.api, sid, f"after-{kind}"), 120, f"session {sid} to work")
        serving_s = time.monotonic() - t0
        time.sleep(1)  # a little load after the recovery too
    ended = [e or c for c, e in zip(load.acked, settle_commands(stack.api, load.acked, timeout=180))]
    not_final = [c for c in ended if c["status"] not in FINAL]
    assert load.acked and not not_final, not_final[:5]
    after = stack.pids()
    others_restarted = sorted(n for n in before if n != kind and after[n] != before[n])
    assert all(after.values()), after  # everything runs
    if kind != "redis":
        # Nothing else went down with it (as it did under honcho). Redis is allowed to take a
        # client down with it: supervisord restarts that one as well (reported below).
        assert not others_restarted, others_restarted
    statuses = {}
    for c in ended:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    _record(kind, old_pid=old, new_pid=new, new_pid_s=restarted_s, up_s=up_s, serving_again_s=serving_s,
            accepted=len(load.acked), outcomes=statuses, refused=load.refused, others_restarted=others_restarted)
    for sid in sids:
        stack.api.http.delete(f"/api/v1/sessions/{sid}/")


def test_a_backend_that_keeps_crashing_is_given_up_and_the_others_run_on(stack):
    placed = _sessions_on_each_backend(stack.api)
    before = stack.pids()
    # Break backend-2 for good: its tmux directory becomes a file, so a new worker cannot start
    # tmux (it tries 3 times, then exits 1). Its running tmux server is moved aside first.
    tmux_dir = stack.data_dir / "tmux" / "backend-2"
    tmux_dir.rename(tmux_dir.with_name("backend-2.away"))
    tmux_dir.write_text("not a directory\n")
    t0 = time.monotonic()
    os.kill(before["backend-2"], signal.SIGKILL)
    wait_for(lambda: stack.info()["backend-2"]["statename"] == "FATAL", 600, "supervisord to give backend-2 up")
    given_up_s = time.monotonic() - t0
    out = stack.output()
    assert "gave up: backend-2 entered FATAL state, too many start retries too quickly" in out
    assert out.count("backend could not start; the worker exits") >= 2  # it was tried again, a bounded number of times
    after = stack.info()
    for name, i in after.items():
        if name != "backend-2":
            assert i["statename"] == "RUNNING" and i["pid"] == before[name], (name, i)
    # /readyz still serves (backend-1 is healthy) and names the missing backend; so does the pool.
    body = wait_for(lambda: (b := stack.ready()) and "backend-2" in b["checks"]["backends_down"] and b, 60,
                    "/readyz to name backend-2")
    assert body["checks"]["backends"] == 1 and body["checks"]["backends_down"] == ["backend-2"], body
    staff = Api(stack.url, stack.printed("API token:"))  # make run's token is the admin's, staff
    backends = wait_for(lambda: {b["id"]: b["status"] for b in staff.http.get("/api/v1/backends/").json()}
                        .get("backend-2") == "dead" and staff.http.get("/api/v1/backends/").json(), 60,
                        "the pool to show backend-2 dead")
    assert {b["id"]: b["status"] for b in backends} == {"backend-1": "healthy", "backend-2": "dead"}
    # Its session moved to backend-1 and works there.
    moved = placed["backend-2"]
    wait_for(lambda: _session_works(stack.api, moved, "moved"), 120, "the session of backend-2 to work elsewhere")
    assert stack.api.http.get(f"/api/v1/sessions/{moved}/").json()["backend"] == "backend-1"
    _record("backend given up", given_up_s=given_up_s, tries=out.count("backend could not start; the worker exits"))
    tmux_dir.unlink()  # repaired: `supervisorctl start backend-2` would bring it back
    # Put back, so that the stack's cleanup finds the cgroups of the shells that lived on in it
    # (their names come from the directory's path).
    tmux_dir.with_name("backend-2.away").rename(tmux_dir)
    for sid in placed.values():
        stack.api.http.delete(f"/api/v1/sessions/{sid}/")


def test_ctrl_c_stops_every_process_and_leaves_the_shells(stack):
    assert stack.pids()["web"]
    t0 = time.monotonic()
    os.killpg(stack.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    code = stack.proc.wait(120)
    stopped_s = time.monotonic() - t0
    assert code == 0, stack.output()[-3000:]

    def left() -> list[tuple[int, str]]:
        # tmux servers and their shells live on by design; everything else must be gone.
        return [(pid, cmd) for pid, cmd in stack.processes_of_this_stack()
                if not cmd.startswith("tmux") and not _under_tmux(pid)]

    try:
        wait_for(lambda: not left(), 30, "every process of the stack to end")
    except AssertionError:
        assert not left(), left()
    assert stack.tmux_server_pid("backend-1")  # the shells live on
    stack.kill_tmux_servers()
    wait_for(lambda: not stack.processes_of_this_stack(), 30, "the tmux servers and shells to end")
    _record("ctrl-c", stopped_s=stopped_s)


def _under_tmux(pid: int) -> bool:
    """Whether ``pid`` descends from a tmux server (a shell, or what it runs)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return False
        if comm.startswith("tmux"):
            return True
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False
