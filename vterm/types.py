"""The objects of API.md as typed, read-only Python values.

Each keeps the JSON it came from in ``raw``, so fields the server adds later are
never lost to an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL_STATUSES = ("succeeded", "failed", "timed_out", "interrupted")
LIVE_SESSION_STATUSES = ("initializing", "active", "idle", "migrating")


def _dt(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class ResourceUsage:
    """What a session's processes use, as last sampled by its backend."""

    memory_bytes: int | None = None
    pss_bytes: int | None = None
    cpu_percent: float | None = None
    processes: int | None = None
    sampled_at: datetime | None = None

    @classmethod
    def from_json(cls, d: dict | None) -> ResourceUsage | None:
        if not d:
            return None
        return cls(memory_bytes=d.get("memory_bytes"), pss_bytes=d.get("pss_bytes"),
                   cpu_percent=d.get("cpu_percent"), processes=d.get("processes"),
                   sampled_at=_dt(d.get("sampled_at")))


@dataclass(frozen=True)
class Session:
    """A terminal session (API.md "Sessions")."""

    id: str
    name: str
    owner: str
    status: str
    backend: str | None
    cwd: str
    env: dict[str, str]
    cols: int
    rows: int
    created_at: datetime | None
    last_activity: datetime | None
    command_count: int
    status_reason: str = ""
    resource_usage: ResourceUsage | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_SESSION_STATUSES

    @classmethod
    def from_json(cls, d: dict) -> Session:
        return cls(id=d["id"], name=d.get("name", ""), owner=d.get("owner", ""), status=d["status"],
                   backend=d.get("backend"), cwd=d.get("cwd", ""), env=d.get("env") or {},
                   cols=d.get("cols", 0), rows=d.get("rows", 0), created_at=_dt(d.get("created_at")),
                   last_activity=_dt(d.get("last_activity")), command_count=d.get("command_count", 0),
                   status_reason=d.get("status_reason", ""),
                   resource_usage=ResourceUsage.from_json(d.get("resource_usage")), raw=d)


@dataclass(frozen=True)
class CommandResult:
    """A command and, once it has ended, its outcome (API.md "Commands").

    A command that exits non-zero is a normal result, not an exception: look at
    ``ok``, ``exit_code`` and ``status``.
    """

    id: str
    session: str
    seq: int
    command: str
    status: str
    exit_code: int | None
    output: str
    output_truncated: bool
    cwd: str
    duration_ms: float | None
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The command has ended (succeeded, failed, timed out or was interrupted)."""
        return self.status in FINAL_STATUSES

    @property
    def ok(self) -> bool:
        """It ran to the end and exited 0."""
        return self.status == "succeeded"

    @classmethod
    def from_json(cls, d: dict) -> CommandResult:
        return cls(id=d["id"], session=str(d.get("session", "")), seq=d.get("seq", 0), command=d.get("command", ""),
                   status=d["status"], exit_code=d.get("exit_code"), output=d.get("output") or "",
                   output_truncated=bool(d.get("output_truncated")), cwd=d.get("cwd") or "",
                   duration_ms=d.get("duration_ms"), submitted_at=_dt(d.get("submitted_at")),
                   started_at=_dt(d.get("started_at")), finished_at=_dt(d.get("finished_at")),
                   reason=d.get("reason") or "", raw=d)


JOB_FINAL_STATUSES = ("succeeded", "failed", "timed_out", "killed", "interrupted")


@dataclass(frozen=True)
class Job:
    """A background job of a session (API.md "Jobs"): it runs beside the shell, not in it."""

    id: str
    session: str
    command: str
    status: str
    exit_code: int | None
    pid: int | None
    cwd: str
    started_at: datetime | None
    ended_at: datetime | None
    reason: str = ""
    timeout: float | None = None
    output_truncated: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status in JOB_FINAL_STATUSES

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(id=d["id"], session=str(d.get("session", "")), command=d.get("command", ""), status=d["status"],
                   exit_code=d.get("exit_code"), pid=d.get("pid"), cwd=d.get("cwd") or "",
                   started_at=_dt(d.get("started_at")), ended_at=_dt(d.get("ended_at")), reason=d.get("reason") or "",
                   timeout=d.get("timeout"), output_truncated=bool(d.get("output_truncated")), raw=d)


@dataclass(frozen=True)
class JobOutput:
    """A piece of a job's output: from byte ``offset`` of its UTF-8 to ``next_offset``."""

    output: str
    offset: int
    next_offset: int
    eof: bool

    @classmethod
    def from_json(cls, d: dict) -> JobOutput:
        return cls(output=d.get("output") or "", offset=d["offset"], next_offset=d["next_offset"], eof=bool(d["eof"]))


@dataclass(frozen=True)
class Screen:
    """What the session's terminal shows now."""

    cols: int
    rows: int
    lines: list[str]
    cursor_x: int
    cursor_y: int

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines).rstrip("\n")

    @classmethod
    def from_json(cls, d: dict) -> Screen:
        cur = d.get("cursor") or {}
        return cls(cols=d["cols"], rows=d["rows"], lines=list(d["lines"]), cursor_x=cur.get("x", 0),
                   cursor_y=cur.get("y", 0))


@dataclass(frozen=True)
class Frame:
    """One server → client WebSocket frame (API.md "WebSocket terminal").

    ``type`` is ``hello``, ``output``, ``command``, ``status``, ``snapshot``, ``error``
    or ``pong`` (or a newer type, kept whole in ``raw``).
    """

    type: str
    seq: int | None = None
    data: str = ""
    session: Session | None = None
    command: CommandResult | None = None
    ref: str | None = None
    status: str | None = None
    lines: list[str] | None = None
    code: str | None = None
    message: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict) -> Frame:
        kind = d.get("type", "")
        return cls(
            type=kind, seq=d.get("seq"), data=d.get("data") or "",
            session=Session.from_json(d["session"]) if isinstance(d.get("session"), dict) else None,
            command=CommandResult.from_json(d["command"]) if isinstance(d.get("command"), dict) else None,
            ref=d.get("ref"), status=d.get("status"), lines=d.get("lines"), code=d.get("code"),
            message=d.get("message"), raw=d,
        )
