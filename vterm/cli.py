"""`vterm`: sessions, commands and terminals of a vterm server from the shell.

    vterm login --url http://127.0.0.1:8000          # asks for the token, saves both (0600)
    vterm sessions new --name build --cwd /tmp
    vterm run build -- make test                     # its output; exits with its exit code
    vterm attach build                               # the terminal; Ctrl-] detaches
    vterm history build
    vterm jobs start build -- make serve             # beside the shell; prints the job's id
    vterm jobs logs -f build 3f2a                    # its output as it comes

URL and token: --url/--token, else VTERM_URL/VTERM_TOKEN, else the saved login.
A session is named by its id, its name, or a unique prefix of either.
Exit codes: `run` exits with the command's own code (124 timed out, 130 interrupted,
125 when vterm itself failed); other subcommands exit 0, or 1 on error, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import signal
import sys
import uuid
from typing import Any

from . import config
from .client import AsyncClient, Client
from .errors import AuthError, BadRequest, ConnectionFailed, NotFound, VtermError
from .types import CommandResult, Job, Session

EXIT_TIMED_OUT = 124
EXIT_VTERM_FAILED = 125
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the CLI reports as is, on stderr."""


def _session_json(s: Session) -> dict:
    return s.raw


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def resolve_session(client: Client, ref: str) -> Session:
    """A session by id, exact name, or unique prefix of name or id (live ones win a tie)."""
    try:
        uuid.UUID(ref)
        return client.get_session(ref)
    except ValueError:
        pass
    sessions = client.list_sessions()
    for match in (lambda s: s.name == ref, lambda s: s.name.startswith(ref) or s.id.startswith(ref)):
        found = [s for s in sessions if match(s)]
        if len(found) > 1:
            live = [s for s in found if s.is_live]
            found = live if live else found
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"{s.id[:8]} ({s.name or 'no name'}, {s.status})" for s in found[:6])
            raise CliError(f"vterm: {ref!r} matches {len(found)} sessions: {names}; give more of the id")
    raise NotFound(f"no session with id, name or prefix {ref!r}", 404)


# -- subcommands -----------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    settings = config.resolve(args.url, None)
    url = args.url or settings.url
    token = args.token
    if not token:
        if sys.stdin.isatty():
            token = getpass.getpass(f"API token for {url}: ").strip()
        else:
            token = sys.stdin.readline().strip()
    if not token:
        raise CliError("vterm: no token given")
    with Client(url, token) as client:
        count = client.count_sessions()
    path = config.save(url, token)
    print(f"logged in to {url} ({count} session(s) visible); saved to {path}")
    return 0


def cmd_sessions_list(args: argparse.Namespace, client: Client) -> int:
    sessions = client.list_sessions()
    if not args.all:
        sessions = [s for s in sessions if s.is_live]
    if args.json:
        _print_json([_session_json(s) for s in sessions])
        return 0
    rows = []
    for s in sessions:
        ru = s.resource_usage
        rows.append([s.id, s.name or "-", s.status, s.backend or "-", s.cwd or "-", str(s.command_count),
                     _human_bytes(ru.memory_bytes if ru else None),
                     f"{ru.cpu_percent:.1f}%" if ru and ru.cpu_percent is not None else "-",
                     f"{s.created_at:%Y-%m-%d %H:%M}" if s.created_at else "-"])
    print(_table(rows, ["ID", "NAME", "STATUS", "BACKEND", "CWD", "CMDS", "MEM", "CPU", "CREATED"]))
    return 0


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"vterm: --env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def cmd_sessions_new(args: argparse.Namespace, client: Client) -> int:
    s = client.create_session(name=args.name, cwd=args.cwd, env=_parse_env(args.env) or None, cols=args.cols,
                              rows=args.rows)
    if args.json:
        _print_json(_session_json(s))
    else:
        print(s.id)
    return 0


def cmd_sessions_rm(args: argparse.Namespace, client: Client) -> int:
    ended = []
    for ref in args.sessions:
        s = resolve_session(client, ref)
        client.end_session(s)
        ended.append(s.id)
        if not args.json:
            print(f"ended {s.id}{' (' + s.name + ')' if s.name else ''}")
    if args.json:
        _print_json({"ended": ended})
    return 0


def cmd_sessions_show(args: argparse.Namespace, client: Client) -> int:
    s = resolve_session(client, args.session)
    if args.json:
        _print_json(_session_json(s))
    else:
        for k, v in s.raw.items():
            print(f"{k:16} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def _exit_code_of(result: CommandResult) -> int:
    if result.status == "succeeded":
        return 0
    if result.status == "timed_out":
        return EXIT_TIMED_OUT
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    code = result.exit_code if result.exit_code is not None else 1
    return code if 0 < code < 256 else 1


def _run_and_wait(client: Client, session: Session, command: str, timeout: float | None,
                  idle_timeout: float | None = None) -> CommandResult:
    """Submit, then wait however long it takes; the first Ctrl-C interrupts the remote command.

    No server-side ``wait`` on the submit: a Ctrl-C during a long POST would leave us without
    the command's id to interrupt. Polling starts at 50 ms, so quick commands return quickly.
    """
    cmd = client.submit(session, command, timeout=timeout, idle_timeout=idle_timeout)
    interrupted = False
    while not cmd.done:
        try:
            cmd = client.wait_command(session, cmd, wait=None if not interrupted else 10)
            if interrupted and not cmd.done:
                raise CliError("vterm: the command did not stop after Ctrl-C; it may still be running")
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            print("\nvterm: interrupting the remote command (Ctrl-C again to stop waiting)", file=sys.stderr)
            try:
                client.interrupt(session, cmd)
            except VtermError:
                pass  # it ended meanwhile (409)
    return cmd


def cmd_run(args: argparse.Namespace, client: Client) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise CliError("vterm: no command given (vterm run SESSION -- COMMAND...)")
    command = " ".join(words)
    session = resolve_session(client, args.session)
    result = _run_and_wait(client, session, command, args.timeout, args.idle_timeout)
    if args.json:
        _print_json(result.raw)
    else:
        sys.stdout.write(result.output)
        sys.stdout.flush()
    if result.output_truncated:
        print("vterm: output truncated by the server (raw bytes: GET …/output?raw=1)", file=sys.stderr)
    if result.status == "timed_out":
        limit = f"after {args.timeout:g}s" if args.timeout else "by the server"
        print(f"vterm: command timed out ({result.reason or limit})", file=sys.stderr)
    elif result.status == "interrupted":
        print(f"vterm: command interrupted{': ' + result.reason if result.reason else ''}", file=sys.stderr)
    return _exit_code_of(result)


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    session = resolve_session(client, args.session)
    history = client.history(session)
    if args.json:
        _print_json([c.raw for c in history])
        return 0
    for c in history:
        code = "-" if c.exit_code is None else str(c.exit_code)
        dur = f"{c.duration_ms:.0f}ms" if c.duration_ms is not None else "-"
        print(f"{c.seq:>4}  {c.status:<11} {code:>4}  {dur:>8}  {c.cwd or '-'}  $ {c.command}")
        if args.output and c.output:
            for line in c.output.rstrip("\n").split("\n"):
                print(f"      | {line}")
    return 0


def resolve_job(client: Client, session: Session, ref: str) -> Job:
    """A job of the session by id or unique prefix of its id."""
    try:
        uuid.UUID(ref)
        return client.get_job(session, ref)
    except ValueError:
        pass
    found = [j for j in client.list_jobs(session) if j.id.startswith(ref)]
    if len(found) > 1:
        raise CliError(f"vterm: {ref!r} matches {len(found)} jobs; give more of the id")
    if not found:
        raise NotFound(f"no job with id or prefix {ref!r} in session {session.name or session.id}", 404)
    return found[0]


def _job_exit_code(job: Job) -> int:
    """As `run` exits for a command; a killed job as a shell says SIGKILL (137)."""
    special = {"succeeded": 0, "timed_out": EXIT_TIMED_OUT, "interrupted": EXIT_INTERRUPTED, "killed": 137}
    if job.status in special:
        return special[job.status]
    code = job.exit_code if job.exit_code is not None else 1
    return code if 0 < code < 256 else 1


def cmd_jobs_start(args: argparse.Namespace, client: Client) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise CliError("vterm: no command given (vterm jobs start SESSION -- COMMAND...)")
    job = client.start_job(resolve_session(client, args.session), " ".join(words), timeout=args.timeout)
    if args.json:
        _print_json(job.raw)
    else:
        print(job.id)
    return 0


def cmd_jobs_list(args: argparse.Namespace, client: Client) -> int:
    jobs = client.list_jobs(resolve_session(client, args.session))
    if args.json:
        _print_json([j.raw for j in jobs])
        return 0
    rows = [[j.id, j.status, "-" if j.exit_code is None else str(j.exit_code), "-" if j.pid is None else str(j.pid),
             f"{j.started_at:%Y-%m-%d %H:%M:%S}" if j.started_at else "-", j.command] for j in jobs]
    print(_table(rows, ["ID", "STATUS", "EXIT", "PID", "STARTED", "COMMAND"]))
    return 0


def cmd_jobs_logs(args: argparse.Namespace, client: Client) -> int:
    """The job's output; with -f, as it comes until the job ends, then exit as `run` does."""
    session = resolve_session(client, args.session)
    job = resolve_job(client, session, args.job)
    if not args.follow:
        sys.stdout.write(client.job_output(session, job).output)
        sys.stdout.flush()
        return 0
    for text in client.follow_job_output(session, job):
        sys.stdout.write(text)
        sys.stdout.flush()
    job = client.get_job(session, job)
    if job.status != "succeeded":
        print(f"vterm: job {job.status}{': ' + job.reason if job.reason else ''}", file=sys.stderr)
    return _job_exit_code(job)


def cmd_jobs_kill(args: argparse.Namespace, client: Client) -> int:
    session = resolve_session(client, args.session)
    job = client.kill_job(session, resolve_job(client, session, args.job))
    job = client.wait_job(session, job, wait=10)
    if args.json:
        _print_json(job.raw)
    else:
        print(f"{job.id} {job.status}")
    return 0


def cmd_screen(args: argparse.Namespace, client: Client) -> int:
    session = resolve_session(client, args.session)
    screen = client.screen(session)
    if args.json:
        _print_json(screen.__dict__)
    else:
        print(screen.text)
    return 0


def cmd_attach(args: argparse.Namespace, client: Client) -> int:
    from .attach import attach

    session = resolve_session(client, args.session)
    key = args.detach_key
    if len(key) == 2 and key[0] == "^":
        detach = bytes([ord(key[1].upper()) ^ 0x40])
    elif len(key) == 1:
        detach = key.encode()
    else:
        raise CliError("vterm: --detach-key wants one character or ^X (e.g. '^]')")
    if not args.quiet:
        print(f"attaching to {session.name or session.id} ({session.status}); detach with {key}", file=sys.stderr)

    async def go() -> int:
        async with AsyncClient(client.url, client.token) as aclient:
            return await attach(aclient, session, detach_key=detach)
    return asyncio.run(go())


# -- parser and errors -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="server URL (env VTERM_URL)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (env VTERM_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts")

    p = argparse.ArgumentParser(prog="vterm", parents=[common], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    login = sub.add_parser("login", parents=[common], help="check and save URL and token")
    login.set_defaults(func=cmd_login, needs_client=False)

    sp = sub.add_parser("sessions", parents=[common], help="list sessions (new, rm, show)")
    sp.add_argument("--all", "-a", action="store_true", help="ended sessions too")
    sp.set_defaults(func=cmd_sessions_list)
    ssub = sp.add_subparsers(dest="sessions_cmd", metavar="ACTION")
    ls = ssub.add_parser("list", aliases=["ls"], parents=[common], help="list sessions")
    ls.add_argument("--all", "-a", action="store_true", help="ended sessions too")
    ls.set_defaults(func=cmd_sessions_list)
    new = ssub.add_parser("new", parents=[common], help="start a session; prints its id")
    new.add_argument("--name", help="a name to refer to it by")
    new.add_argument("--cwd", help="absolute starting directory on the backend")
    new.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)")
    new.add_argument("--cols", type=int)
    new.add_argument("--rows", type=int)
    new.set_defaults(func=cmd_sessions_new)
    rm = ssub.add_parser("rm", parents=[common], help="end sessions")
    rm.add_argument("sessions", nargs="+", metavar="SESSION")
    rm.set_defaults(func=cmd_sessions_rm)
    show = ssub.add_parser("show", parents=[common], help="one session in full")
    show.add_argument("session", metavar="SESSION")
    show.set_defaults(func=cmd_sessions_show)

    run = sub.add_parser("run", parents=[common], help="run a command, print its output, exit with its code",
                         usage="vterm run [--timeout S] SESSION -- COMMAND...")
    run.add_argument("--timeout", type=float, help="the server ends the command after S seconds (exit 124)")
    run.add_argument("--idle-timeout", type=float, metavar="S",
                     help="the server ends the command when it prints nothing for S seconds (exit 124)")
    run.add_argument("session", metavar="SESSION")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    run.set_defaults(func=cmd_run, vterm_error_exit=EXIT_VTERM_FAILED)

    att = sub.add_parser("attach", parents=[common], help="the session in this terminal (Ctrl-] detaches)")
    att.add_argument("session", metavar="SESSION")
    att.add_argument("--detach-key", default="^]", help="detach key, e.g. '^]' (default) or '^Q'")
    att.add_argument("--quiet", "-q", action="store_true", help="no banner")
    att.set_defaults(func=cmd_attach)

    hist = sub.add_parser("history", parents=[common], help="the session's commands, oldest first")
    hist.add_argument("session", metavar="SESSION")
    hist.add_argument("--output", "-o", action="store_true", help="with each command's output")
    hist.set_defaults(func=cmd_history)

    jp = sub.add_parser("jobs", parents=[common], help="background jobs of a session (start, ls, logs, kill)")
    jsub = jp.add_subparsers(dest="jobs_cmd", metavar="ACTION", required=True)
    js = jsub.add_parser("start", parents=[common], help="start a job beside the shell; prints its id",
                         usage="vterm jobs start [--timeout S] SESSION -- COMMAND...")
    js.add_argument("--timeout", type=float, help="the server kills the job after S seconds (timed_out)")
    js.add_argument("session", metavar="SESSION")
    js.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    js.set_defaults(func=cmd_jobs_start)
    jl = jsub.add_parser("ls", aliases=["list"], parents=[common], help="the session's jobs, oldest first")
    jl.add_argument("session", metavar="SESSION")
    jl.set_defaults(func=cmd_jobs_list)
    jg = jsub.add_parser("logs", parents=[common], help="a job's output (-f: follow it, exit with its code)")
    jg.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    jg.add_argument("session", metavar="SESSION")
    jg.add_argument("job", metavar="JOB", help="its id or a unique prefix of it")
    jg.set_defaults(func=cmd_jobs_logs)
    jk = jsub.add_parser("kill", parents=[common], help="end a job and everything it started")
    jk.add_argument("session", metavar="SESSION")
    jk.add_argument("job", metavar="JOB", help="its id or a unique prefix of it")
    jk.set_defaults(func=cmd_jobs_kill)

    scr = sub.add_parser("screen", parents=[common], help="what the session's terminal shows now")
    scr.add_argument("session", metavar="SESSION")
    scr.set_defaults(func=cmd_screen)
    return p


def describe_error(exc: VtermError, settings: config.Settings) -> str:
    if isinstance(exc, ConnectionFailed):
        return (f"vterm: {exc.message}\n  Is the server running, and is the URL right? "
                f"(URL from {settings.url_source}; set --url or VTERM_URL, or `vterm login --url URL`)")
    if isinstance(exc, AuthError) and exc.status in (401, None):
        return (f"vterm: the server did not accept the token: {exc.message}\n"
                f"  (token from {settings.token_source}; set --token or VTERM_TOKEN, or `vterm login`)")
    if isinstance(exc, AuthError):
        return f"vterm: not allowed: {exc.message}"
    if isinstance(exc, NotFound):
        return f"vterm: not found: {exc}"
    if isinstance(exc, BadRequest) and exc.errors:
        detail = "\n".join(f"  {field}: {' '.join(msgs)}" for field, msgs in exc.errors.items())
        return f"vterm: the server refused the request (400):\n{detail}"
    retry = getattr(exc, "retry_after", None)
    return f"vterm: {exc}" + (f" (retry after {retry:g}s)" if retry else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("url", None), ("token", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    settings = config.resolve(args.url, args.token)
    error_exit = getattr(args, "vterm_error_exit", 1)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `vterm sessions | head` ends quietly
    try:
        if not getattr(args, "needs_client", True):
            return args.func(args)
        if not settings.token:
            raise CliError("vterm: no API token: pass --token, set VTERM_TOKEN, or run `vterm login`")
        with Client(settings.url, settings.token) as client:
            return args.func(args, client)
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return error_exit
    except VtermError as exc:
        print(describe_error(exc, settings), file=sys.stderr)
        return error_exit
    except KeyboardInterrupt:
        print("vterm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
