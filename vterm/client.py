"""Python client for vterm's REST and WebSocket API (API.md), synchronous and asyncio.

    from vterm.client import Client

    with Client("http://127.0.0.1:8000", token) as vt:
        s = vt.create_session(name="build", cwd="/tmp")
        r = vt.run(s, "make test")          # waits until it ends, however long
        print(r.exit_code, r.cwd, r.output)
        with vt.terminal(s) as term:         # the live terminal over the WebSocket
            term.send_input("top\\n")
            for frame in term:
                ...

``AsyncClient`` has the same methods as coroutines (``async with`` / ``async for``).
Errors are exceptions from ``vterm.errors`` carrying the server's message and status;
a command that exits non-zero is not an error (see ``CommandResult.ok``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import httpx

from .errors import (
    AuthError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    NotFound,
    RateLimited,
    StreamClosed,
    Unavailable,
    VtermError,
    error_for_response,
)
from .stream import AsyncTerminal, Terminal, ws_url
from .types import CommandResult, Frame, Job, JobOutput, ResourceUsage, Screen, Session

__all__ = [
    "AsyncClient",
    "AsyncTerminal",
    "AuthError",
    "BadRequest",
    "Client",
    "CommandResult",
    "Conflict",
    "ConnectionFailed",
    "Frame",
    "Job",
    "JobOutput",
    "NotFound",
    "RateLimited",
    "ResourceUsage",
    "Screen",
    "Session",
    "StreamClosed",
    "Terminal",
    "Unavailable",
    "VtermError",
]

API = "/api/v1"
# The server bounds ``wait`` (VTERM_MAX_WAIT, 300 s by default); longer waits continue by polling.
MAX_SERVER_WAIT = 60.0
POLL_MIN, POLL_MAX = 0.05, 1.0

def _sid(session: str | Session) -> str:
    return session.id if isinstance(session, Session) else str(session)


def _cid(command: str | CommandResult) -> str:
    return command.id if isinstance(command, CommandResult) else str(command)


def _jid(job: str | Job) -> str:
    return job.id if isinstance(job, Job) else str(job)


def _session_body(name: str | None, cwd: str | None, env: dict[str, str] | None, cols: int | None,
                  rows: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "cwd": cwd, "env": env, "cols": cols, "rows": rows}
    return {k: v for k, v in body.items() if v is not None}


def _command_body(command: str, wait: float | None, **options: Any) -> dict[str, Any]:
    """``options``: ``timeout``, ``idle_timeout``, ``notify_url`` (docs/api.md), left out when None."""
    body: dict[str, Any] = {"command": command, **{k: v for k, v in options.items() if v is not None}}
    if wait:
        body["wait"] = wait
    return body


def _parse(response: httpx.Response) -> Any:
    """The JSON of a successful answer, or the matching exception."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = response.text
    if response.is_success:
        return body
    raise error_for_response(response.status_code, body, response.headers, response.reason_phrase)


def _unreachable(base_url: str, exc: Exception) -> ConnectionFailed:
    if isinstance(exc, httpx.TimeoutException):
        return ConnectionFailed(f"vterm at {base_url} did not answer in time ({type(exc).__name__})")
    return ConnectionFailed(f"cannot reach vterm at {base_url}: {exc}")


class _Remaining:
    """A deadline that may be None (no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def over(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def server_wait(self) -> float:
        left = self.left()
        return MAX_SERVER_WAIT if left is None else min(MAX_SERVER_WAIT, left)


def _pauses(deadline: _Remaining):
    """How long to sleep between polls (growing from POLL_MIN to POLL_MAX) until the deadline."""
    pause = POLL_MIN
    while not deadline.over():
        left = deadline.left()
        yield pause if left is None else min(pause, left)
        pause = min(POLL_MAX, pause * 1.5)


def _poll(fetch, wait: float | None):
    """``fetch()`` again until what it returns is ``done``, or ``wait`` seconds have passed."""
    deadline = _Remaining(wait)
    got = fetch()
    for pause in _pauses(deadline):
        if got.done:
            break
        time.sleep(pause)
        got = fetch()
    return got


async def _poll_async(fetch, wait: float | None):
    """``_poll`` for a coroutine ``fetch``."""
    import asyncio

    deadline = _Remaining(wait)
    got = await fetch()
    for pause in _pauses(deadline):
        if got.done:
            break
        await asyncio.sleep(pause)
        got = await fetch()
    return got


class Client:
    """A synchronous vterm client (httpx). Use as a context manager or call ``close()``.

    ``url`` is the service's base URL (``http://host:port``), ``token`` an API token
    (``manage.py create_api_token USER``). ``timeout`` bounds each HTTP request that
    does not wait on a command.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, extra_time: float = 0.0, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, timeout=self.timeout + extra_time, **kw)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _parse(r)

    def _pages(self, path: str) -> Iterator[dict]:
        url: str | None = path
        while url:
            page = self._request("GET", url)
            yield from page["results"]
            url = page.get("next")

    # -- sessions ---------------------------------------------------------------

    def create_session(self, *, name: str | None = None, cwd: str | None = None, env: dict[str, str] | None = None,
                       cols: int | None = None, rows: int | None = None) -> Session:
        """Start a new shell. ``cwd`` must be an absolute path that exists on the backend."""
        return Session.from_json(self._request("POST", f"{API}/sessions/",
                                               json=_session_body(name, cwd, env, cols, rows)))

    def list_sessions(self) -> list[Session]:
        """Every session this user may see (all pages), newest first."""
        return [Session.from_json(d) for d in self._pages(f"{API}/sessions/")]

    def count_sessions(self) -> int:
        """How many sessions this user may see; one request, so also a check of URL and token."""
        return self._request("GET", f"{API}/sessions/")["count"]

    def get_session(self, session: str | Session) -> Session:
        return Session.from_json(self._request("GET", f"{API}/sessions/{_sid(session)}/"))

    def end_session(self, session: str | Session) -> None:
        """End the session (its shell is killed; the record and history stay)."""
        self._request("DELETE", f"{API}/sessions/{_sid(session)}/")

    # -- commands ---------------------------------------------------------------

    def submit(self, session: str | Session, command: str, *, timeout: float | None = None,
               wait: float | None = None, idle_timeout: float | None = None,
               notify_url: str | None = None) -> CommandResult:
        """Queue a command; with ``wait`` (≤ the server's limit) the answer waits for it to end."""
        body = _command_body(command, wait, timeout=timeout, idle_timeout=idle_timeout, notify_url=notify_url)
        return CommandResult.from_json(self._request(
            "POST", f"{API}/sessions/{_sid(session)}/commands/", json=body, extra_time=wait or 0.0))

    def run(self, session: str | Session, command: str, *, timeout: float | None = None,
            wait: float | None = None, idle_timeout: float | None = None,
            notify_url: str | None = None) -> CommandResult:
        """Run ``command`` in the session and return its result once it has ended.

        ``timeout``: the server ends the command (``timed_out``) after this many seconds;
        ``idle_timeout``: after this many seconds without output. ``notify_url``: POSTed the
        result once it has ended (a completion webhook, docs/api.md).
        ``wait``: give up waiting after this long and return the command as it stands
        (check ``.done``); ``None`` waits as long as the command runs. Non-zero exit codes
        raise nothing: see ``.ok`` / ``.exit_code``.
        """
        deadline = _Remaining(wait)
        try:
            cmd = self.submit(session, command, timeout=timeout, wait=deadline.server_wait(),
                              idle_timeout=idle_timeout, notify_url=notify_url)
        except BadRequest as exc:
            if "wait" not in exc.errors:
                raise
            # This server allows a shorter wait (VTERM_MAX_WAIT): nothing was queued; poll instead.
            cmd = self.submit(session, command, timeout=timeout, idle_timeout=idle_timeout, notify_url=notify_url)
        if cmd.done or deadline.over():
            return cmd
        return self.wait_command(session, cmd, wait=deadline.left())

    def wait_command(self, session: str | Session, command: str | CommandResult, *,
                     wait: float | None = None) -> CommandResult:
        """Poll a command until it has ended, or ``wait`` seconds have passed."""
        return _poll(lambda: self.get_command(session, command), wait)

    def get_command(self, session: str | Session, command: str | CommandResult) -> CommandResult:
        return CommandResult.from_json(self._request("GET", f"{API}/sessions/{_sid(session)}/commands/{_cid(command)}/"))

    def history(self, session: str | Session) -> list[CommandResult]:
        """The session's commands, oldest first."""
        return [CommandResult.from_json(d) for d in self._pages(f"{API}/sessions/{_sid(session)}/commands/")]

    def raw_output(self, session: str | Session, command: str | CommandResult) -> bytes:
        """The exact bytes the command wrote to the terminal, escapes and all."""
        try:
            r = self._http.get(f"{API}/sessions/{_sid(session)}/commands/{_cid(command)}/output", params={"raw": 1})
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if not r.is_success:
            _parse(r)
        return r.content

    def interrupt(self, session: str | Session, command: str | CommandResult) -> CommandResult:
        """Send Ctrl-C to a queued or running command (409 Conflict once it has ended)."""
        return CommandResult.from_json(self._request(
            "POST", f"{API}/sessions/{_sid(session)}/commands/{_cid(command)}/interrupt/"))

    # -- background jobs --------------------------------------------------------

    def start_job(self, session: str | Session, command: str, *, timeout: float | None = None) -> Job:
        """Start ``command`` beside the session's shell (its cwd and environment, not its foreground)."""
        body: dict[str, Any] = {"command": command, **({"timeout": timeout} if timeout is not None else {})}
        return Job.from_json(self._request("POST", f"{API}/sessions/{_sid(session)}/jobs/", json=body))

    def list_jobs(self, session: str | Session) -> list[Job]:
        """The session's jobs, oldest first."""
        return [Job.from_json(d) for d in self._pages(f"{API}/sessions/{_sid(session)}/jobs/")]

    def get_job(self, session: str | Session, job: str | Job) -> Job:
        return Job.from_json(self._request("GET", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/"))

    def job_output(self, session: str | Session, job: str | Job, offset: int = 0) -> JobOutput:
        """The job's output from byte ``offset`` on (what has come so far; ``eof`` once it has ended)."""
        return JobOutput.from_json(self._request("GET", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/output/",
                                                 params={"offset": offset}))

    def follow_job_output(self, session: str | Session, job: str | Job, offset: int = 0) -> Iterator[str]:
        """The job's output as it comes, until the job has ended and all of it was read."""
        pause = POLL_MIN
        while True:
            piece = self.job_output(session, job, offset)
            if piece.output:
                yield piece.output
                pause = POLL_MIN
            if piece.eof:
                return
            offset = piece.next_offset
            if not piece.output:
                time.sleep(pause)
                pause = min(POLL_MAX, pause * 1.5)

    def kill_job(self, session: str | Session, job: str | Job) -> Job:
        """End the job and its whole process tree (409 Conflict once it has ended)."""
        return Job.from_json(self._request("POST", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/kill/"))

    def wait_job(self, session: str | Session, job: str | Job, *, wait: float | None = None) -> Job:
        """Poll a job until it has ended, or ``wait`` seconds have passed."""
        return _poll(lambda: self.get_job(session, job), wait)

    # -- the terminal -----------------------------------------------------------

    def send_input(self, session: str | Session, data: str) -> None:
        """Type ``data`` into the terminal, literally (``"\\r"`` is Enter)."""
        self._request("POST", f"{API}/sessions/{_sid(session)}/input/", json={"data": data})

    def send_keys(self, session: str | Session, keys: list[str]) -> None:
        """Press tmux-named keys: ``["C-c"]``, ``["Up", "Enter"]``."""
        self._request("POST", f"{API}/sessions/{_sid(session)}/input/", json={"keys": list(keys)})

    def screen(self, session: str | Session) -> Screen:
        return Screen.from_json(self._request("GET", f"{API}/sessions/{_sid(session)}/screen/"))

    def resize(self, session: str | Session, cols: int, rows: int) -> Session:
        return Session.from_json(self._request("POST", f"{API}/sessions/{_sid(session)}/resize/",
                                               json={"cols": cols, "rows": rows}))

    def terminal(self, session: str | Session, *, since: int | None = None, reconnect: bool = True) -> Terminal:
        """Open the session's WebSocket terminal (frames, input, resize, run, interrupt).

        ``since``: resume after this output seq (replay of what the server still keeps).
        With ``reconnect``, iteration reconnects after a dropped connection, resuming
        from the last seq seen, so no output is lost or repeated.
        """
        term = Terminal(ws_url(self.url, _sid(session)), self.token, since=since, reconnect=reconnect,
                        open_timeout=self.timeout)
        term.connect()
        return term

    def stream_output(self, session: str | Session, *, since: int | None = None) -> Iterator[str]:
        """The session's terminal output as it comes (raw text with escapes), until it closes."""
        with self.terminal(session, since=since) as term:
            for frame in term:
                if frame.type == "output":
                    yield frame.data
                elif frame.type == "snapshot" and frame.lines is not None:
                    yield "\n".join(frame.lines)

    # -- service ----------------------------------------------------------------

    def ready(self) -> dict:
        """``/readyz``: which of database, Redis and backends answer (no auth needed)."""
        try:
            r = self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        try:
            return r.json()
        except ValueError:
            raise VtermError(f"{self.url}/readyz did not answer JSON: is this a vterm server?", r.status_code) from None


class AsyncClient:
    """The asyncio twin of ``Client``: the same methods, as coroutines."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, extra_time: float = 0.0, **kw: Any) -> Any:
        try:
            r = await self._http.request(method, path, timeout=self.timeout + extra_time, **kw)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _parse(r)

    async def _pages(self, path: str) -> list[dict]:
        out: list[dict] = []
        url: str | None = path
        while url:
            page = await self._request("GET", url)
            out.extend(page["results"])
            url = page.get("next")
        return out

    async def create_session(self, *, name: str | None = None, cwd: str | None = None,
                             env: dict[str, str] | None = None, cols: int | None = None,
                             rows: int | None = None) -> Session:
        return Session.from_json(await self._request("POST", f"{API}/sessions/",
                                                     json=_session_body(name, cwd, env, cols, rows)))

    async def list_sessions(self) -> list[Session]:
        return [Session.from_json(d) for d in await self._pages(f"{API}/sessions/")]

    async def count_sessions(self) -> int:
        return (await self._request("GET", f"{API}/sessions/"))["count"]

    async def get_session(self, session: str | Session) -> Session:
        return Session.from_json(await self._request("GET", f"{API}/sessions/{_sid(session)}/"))

    async def end_session(self, session: str | Session) -> None:
        await self._request("DELETE", f"{API}/sessions/{_sid(session)}/")

    async def submit(self, session: str | Session, command: str, *, timeout: float | None = None,
                     wait: float | None = None, idle_timeout: float | None = None,
                     notify_url: str | None = None) -> CommandResult:
        body = _command_body(command, wait, timeout=timeout, idle_timeout=idle_timeout, notify_url=notify_url)
        return CommandResult.from_json(await self._request(
            "POST", f"{API}/sessions/{_sid(session)}/commands/", json=body, extra_time=wait or 0.0))

    async def run(self, session: str | Session, command: str, *, timeout: float | None = None,
                  wait: float | None = None, idle_timeout: float | None = None,
                  notify_url: str | None = None) -> CommandResult:
        """See ``Client.run``."""
        deadline = _Remaining(wait)
        try:
            cmd = await self.submit(session, command, timeout=timeout, wait=deadline.server_wait(),
                                    idle_timeout=idle_timeout, notify_url=notify_url)
        except BadRequest as exc:
            if "wait" not in exc.errors:
                raise
            cmd = await self.submit(session, command, timeout=timeout, idle_timeout=idle_timeout,
                                    notify_url=notify_url)
        if cmd.done or deadline.over():
            return cmd
        return await self.wait_command(session, cmd, wait=deadline.left())

    async def wait_command(self, session: str | Session, command: str | CommandResult, *,
                           wait: float | None = None) -> CommandResult:
        return await _poll_async(lambda: self.get_command(session, command), wait)

    async def get_command(self, session: str | Session, command: str | CommandResult) -> CommandResult:
        return CommandResult.from_json(
            await self._request("GET", f"{API}/sessions/{_sid(session)}/commands/{_cid(command)}/"))

    async def history(self, session: str | Session) -> list[CommandResult]:
        return [CommandResult.from_json(d) for d in await self._pages(f"{API}/sessions/{_sid(session)}/commands/")]

    async def interrupt(self, session: str | Session, command: str | CommandResult) -> CommandResult:
        return CommandResult.from_json(await self._request(
            "POST", f"{API}/sessions/{_sid(session)}/commands/{_cid(command)}/interrupt/"))

    async def start_job(self, session: str | Session, command: str, *, timeout: float | None = None) -> Job:
        body: dict[str, Any] = {"command": command, **({"timeout": timeout} if timeout is not None else {})}
        return Job.from_json(await self._request("POST", f"{API}/sessions/{_sid(session)}/jobs/", json=body))

    async def list_jobs(self, session: str | Session) -> list[Job]:
        return [Job.from_json(d) for d in await self._pages(f"{API}/sessions/{_sid(session)}/jobs/")]

    async def get_job(self, session: str | Session, job: str | Job) -> Job:
        return Job.from_json(await self._request("GET", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/"))

    async def job_output(self, session: str | Session, job: str | Job, offset: int = 0) -> JobOutput:
        return JobOutput.from_json(await self._request(
            "GET", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/output/", params={"offset": offset}))

    async def follow_job_output(self, session: str | Session, job: str | Job, offset: int = 0) -> AsyncIterator[str]:
        import asyncio

        pause = POLL_MIN
        while True:
            piece = await self.job_output(session, job, offset)
            if piece.output:
                yield piece.output
                pause = POLL_MIN
            if piece.eof:
                return
            offset = piece.next_offset
            if not piece.output:
                await asyncio.sleep(pause)
                pause = min(POLL_MAX, pause * 1.5)

    async def kill_job(self, session: str | Session, job: str | Job) -> Job:
        return Job.from_json(await self._request("POST", f"{API}/sessions/{_sid(session)}/jobs/{_jid(job)}/kill/"))

    async def wait_job(self, session: str | Session, job: str | Job, *, wait: float | None = None) -> Job:
        return await _poll_async(lambda: self.get_job(session, job), wait)

    async def send_input(self, session: str | Session, data: str) -> None:
        await self._request("POST", f"{API}/sessions/{_sid(session)}/input/", json={"data": data})

    async def send_keys(self, session: str | Session, keys: list[str]) -> None:
        await self._request("POST", f"{API}/sessions/{_sid(session)}/input/", json={"keys": list(keys)})

    async def screen(self, session: str | Session) -> Screen:
        return Screen.from_json(await self._request("GET", f"{API}/sessions/{_sid(session)}/screen/"))

    async def resize(self, session: str | Session, cols: int, rows: int) -> Session:
        return Session.from_json(await self._request("POST", f"{API}/sessions/{_sid(session)}/resize/",
                                                     json={"cols": cols, "rows": rows}))

    async def terminal(self, session: str | Session, *, since: int | None = None,
                       reconnect: bool = True) -> AsyncTerminal:
        """See ``Client.terminal``."""
        term = AsyncTerminal(ws_url(self.url, _sid(session)), self.token, since=since, reconnect=reconnect,
                             open_timeout=self.timeout)
        await term.connect()
        return term

    async def stream_output(self, session: str | Session, *, since: int | None = None) -> AsyncIterator[str]:
        term = await self.terminal(session, since=since)
        async with term:
            async for frame in term:
                if frame.type == "output":
                    yield frame.data
                elif frame.type == "snapshot" and frame.lines is not None:
                    yield "\n".join(frame.lines)
