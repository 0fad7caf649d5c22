"""Where a command's, a keystroke's and a session's creation's time goes, hop by hop, on a stack of its own.

    .venv/bin/python -m tests.bench.hop_profile [--calls 300] [--keys 300] [--creates 0] [--sessions 1] [--redis-url URL]

The stack runs with VTERM_HOP_TRACE (vterm_project/hop_trace.py): each process writes a
CLOCK_MONOTONIC time at each hop it passes. The client here writes its own at sending and at the
answer, on the same clock. One command (or keystroke) at a time, so each hop's first mark inside the
client's window is that command's. Prints each hop's time after the hop it follows (p50, p90, p99), and the
client's total. Marks cost a write(2) each (a few µs): the totals are a
little above the bench's.

A REST command: `POST …/commands/` {"command": "true", "wait": 5} on the hot route. A keystroke:
one character typed over the WebSocket at an idle prompt, until the frame that echoes it (the
bench's figure, vterm_project/bench/terminal_figures.py). A session (`--creates`): `POST /api/v1/sessions/`,
one at a time, until its answer (201, active).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import SCRATCH_REDIS_HELP, Api, make_stack, scratch_redis
from vterm_project.bench import terminal_figures as tf

# (hop, the hop it is timed from, what happens between). Each hop's time is the first mark of its name
# in the client's window; a hop timed from one that is not the hop before it runs beside the path.
COMMAND_HOPS = [
    ("web.recv", "client.send", "Daphne parsed it; the hot route has it"),
    ("web.thread", "web.recv", "on a sync thread"),
    ("web.admitted", "web.thread", "token looked up (SQL), admission script (Redis)"),
    ("web.committed", "web.admitted", "session row counted, command and audit rows written, commit (SQLite)"),
    ("web.pushed", "web.committed", "beside: the inbox push's round trip, as the web sees it"),
    ("worker.taken", "web.committed", "pushed to the inbox (Redis); the backend's BLPOP has it"),
    ("worker.served", "worker.taken", "the session's inbox thread has it"),
    ("worker.typed", "worker.served", "written to tmux (send-keys)"),
    ("worker.output", "worker.typed", "beside: tmux's %output of the typed line"),
    ("worker.ended", "worker.typed", "bash ran it; its end mark (PROMPT_COMMAND) read from tmux"),
    ("worker.stored", "worker.ended", "writer thread: the end's UPDATE (SQLite)"),
    ("worker.replied", "worker.stored", "reply, notice, metrics: one pipeline (Redis)"),
    ("web.reply", "worker.replied", "the web's subscriber has the notice; the wait returns"),
    ("web.sent", "web.reply", "the answer rendered, middleware, written"),
    ("client.recv", "web.sent", "the client has the answer"),
]
KEY_HOPS = [
    ("web.frame", "client.send", "Daphne parsed it; the consumer has it"),
    ("web.input_pushed", "web.frame", "beside: checks, admission and push (one script), as the web sees it"),
    ("worker.taken", "web.frame", "checks, one script (Redis) that admits and pushes; BLPOP has it"),
    ("worker.served", "worker.taken", "the session's inbox thread has it"),
    ("worker.typed", "worker.served", "written to tmux (send-keys)"),
    ("worker.output", "worker.typed", "bash echoed it; tmux's %output read"),
    ("worker.output_stored", "worker.output", "the output thread's pipeline: XADD, to the viewers (Redis)"),
    ("worker.output_sent", "worker.output_stored", "to viewers who joined since, if any (Redis)"),
    ("web.output_frame", "worker.output_sent", "the consumer has it (channels-redis receive)"),
    ("web.output_sent", "web.output_frame", "the frame written"),
    ("client.recv", "web.output_sent", "the client has the frame"),
]

CREATE_HOPS = [
    ("web.create", "client.send", "Daphne, Django's handler and middleware, DRF's view and serializer"),
    ("web.placed", "web.create", "a backend picked, the session's row and its events written (SQLite)"),
    ("worker.start_task", "web.placed", "the start task sent (Celery over Redis); the worker has it"),
    ("worker.start_thread", "worker.start_task", "on one of the backend's start threads"),
    ("worker.shell_ready", "worker.start_thread", "sandbox, cgroup, tmux window, bash up to its first prompt"),
    ("worker.started", "worker.shell_ready", "the session marked active (SQLite)"),
    ("web.start_reply", "worker.started", "the reply (Redis) reaches the web's wait"),
    ("web.created", "web.start_reply", "the session read again, the audit row written (SQLite)"),
    ("client.recv", "web.created", "the answer rendered and written; the client has it"),
]


def read_marks(trace_dir: Path) -> list[tuple[int, str]]:
    marks = []
    for path in trace_dir.glob("*.hops"):
        for line in path.read_text().splitlines():
            t, _, hop = line.partition(" ")
            marks.append((int(t), hop))
    marks.sort()
    return marks


def hop_times(marks: list[tuple[int, str]], windows: list[tuple[int, int]]) -> list[dict[str, int]]:
    """For each client window (sent, answered): the first mark of each hop inside it."""
    rows, i = [], 0
    for start, end in windows:
        while i < len(marks) and marks[i][0] < start:
            i += 1
        row = {"client.send": start, "client.recv": end}
        k = i
        while k < len(marks) and marks[k][0] <= end:
            row.setdefault(marks[k][1], marks[k][0])
            k += 1
        rows.append(row)
    return rows


def table(title: str, hops: list[tuple[str, str, str]], rows: list[dict[str, int]]) -> str:
    """Each hop's time after the one it is timed from (p50, p90, ms); the path's p50s summed."""
    out = [title, f"{'hop':<22} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  from {'':<16} what happens", "-" * 119]
    path_sum = 0.0
    for hop, ref, what in hops:
        deltas = sorted((r[hop] - r[ref]) / 1e6 for r in rows if hop in r and ref in r)
        if not deltas:
            out.append(f"{hop:<22} {'-':>8} {'-':>8} {'-':>8}  {ref:<21} {what} (no mark)")
            continue
        p50 = statistics.median(deltas)
        if not what.startswith("beside"):
            path_sum += p50
        seen = "" if len(deltas) == len(rows) else f" [{len(deltas)}/{len(rows)}]"
        out.append(f"{hop:<22} {p50:8.3f} {_pct(deltas, 0.9):8.3f} {_pct(deltas, 0.99):8.3f}  {ref:<21} {what}{seen}")
    total = sorted((r["client.recv"] - r["client.send"]) / 1e6 for r in rows)
    out.append("-" * 119)
    out.append(f"{'the path, p50s summed':<22} {path_sum:8.3f}")
    out.append(f"{'client total':<22} {statistics.median(total):8.3f} {_pct(total, 0.9):8.3f} {_pct(total, 0.99):8.3f}"
               f"  ({len(rows)} samples)")
    return "\n".join(out)


def _pct(ordered: list[float], q: float) -> float:
    return ordered[int(q * (len(ordered) - 1))]


def creations(api: Api, n: int) -> list[tuple[int, int]]:
    windows = []
    for _ in range(n):
        t0 = time.monotonic_ns()
        api.create_session()
        windows.append((t0, time.monotonic_ns()))
        time.sleep(0.05)
    return windows


def commands(url: str, token: str, sid: str, n: int, warmup: int) -> list[tuple[int, int]]:
    windows = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for i in range(warmup + n):
            t0 = time.monotonic_ns()
            r = http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true", "wait": 5})
            t1 = time.monotonic_ns()
            if r.status_code != 201 or r.json().get("exit_code") != 0:
                raise RuntimeError(f"command failed: HTTP {r.status_code} {r.text[:200]}")
            if i >= warmup:
                windows.append((t0, t1))
            time.sleep(0.01)  # idle between calls, as a program's calls are: each hop pays its wake-up
    return windows


def keystrokes(url: str, token: str, sid: str, n: int) -> list[tuple[int, int]]:
    term = tf.VtermTerminal(url, token, sid)
    try:
        return tf.keystroke_windows(term, n, pause=0.02)
    finally:
        term.close()


def profile(redis_url: str, calls: int, keys: int, warmup: int = 30, sessions: int = 1, creates: int = 0,
            **env) -> tuple[list[dict], list[dict], list[dict]]:
    """A stack of its own with the marks on, holding ``sessions`` (the others idle); ``calls`` commands,
    then ``keys`` keystrokes on one of them, then ``creates`` sessions made one at a time: each one's hops."""
    with tempfile.TemporaryDirectory(prefix="vterm-hops-") as tmp:
        trace = Path(tmp) / "hops"
        trace.mkdir()
        # One user holds every session: the per-user limits off, as in the bench (vterm_project/bench/runner.py).
        room = {"VTERM_BACKEND_CAPACITY": str(max(200, sessions + 10)), "VTERM_MAX_SESSIONS_PER_USER": "0",
                "VTERM_COMMAND_RATE": "0"}
        stack = make_stack(redis_url, Path(tmp) / "stack", backends=1, prefix="hops", VTERM_HOP_TRACE=str(trace),
                           **{**room, **env})
        stack.start()
        try:
            token = stack.token("hops")
            api = Api(stack.url, token)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda _: api.create_session(), range(sessions - 1)))
            sid = api.create_session()["id"]
            cmd_windows = commands(stack.url, token, sid, calls, warmup) if calls else []
            key_windows = keystrokes(stack.url, token, sid, keys) if keys else []
            create_windows = creations(api, creates) if creates else []
        finally:
            stack.stop()
        marks = read_marks(trace)
    return hop_times(marks, cmd_windows), hop_times(marks, key_windows), hop_times(marks, create_windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help=SCRATCH_REDIS_HELP)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=1, help="sessions held (one measured, the others idle)")
    parser.add_argument("--creates", type=int, default=0, help="sessions then made one at a time, 50 ms apart")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the stack")
    args = parser.parse_args()
    with scratch_redis(args.redis_url) as redis_url:
        cmd_rows, key_rows, create_rows = profile(redis_url, args.calls, args.keys, args.warmup, args.sessions,
                                                  args.creates, **dict(e.split("=", 1) for e in args.env))
    if cmd_rows:
        print(table(f"REST command `true` with wait, one session of {args.sessions}, {len(cmd_rows)} calls 10 ms apart",
                    COMMAND_HOPS, cmd_rows))
        print()
    if key_rows:
        print(table(f"Keystroke echo over the WebSocket, {len(key_rows)} keys 20 ms apart", KEY_HOPS, key_rows))
        print()
    if create_rows:
        print(table(f"Session creation, POST /api/v1/sessions/, {len(create_rows)} one at a time", CREATE_HOPS,
                    create_rows))


if __name__ == "__main__":
    main()
