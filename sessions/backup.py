"""Backup and restore of what vterm keeps (docs/backup.md).

One JSON document (gzipped when the path ends in ``.gz``) holds:

- the database rows: the users that own things (by username, so a restore merges with users
  that exist), their API tokens, and every row of the sessions app (backends, sessions,
  commands with their raw output, session events, audit events, and any model added later);
- the Redis state that matters: the output stream of every live session (what a viewer
  replays with ``?since=``). Everything else in Redis is rebuilt by the running service
  (heartbeats, locks, replies, rate-limit buckets, pool decisions, metrics counters).

The database rows are read in one transaction (a snapshot on PostgreSQL). For large
production databases, pg_dump and Redis' own persistence are the primary backups; this
format is for moving a deployment, small installations and tests.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.core import serializers
from django.core.management.color import no_style
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model, Q
from rest_framework.authtoken.models import Token

from .models import TerminalSession
from .redis_state import output_stream_key, sync_client

FORMAT = "vterm-backup"
VERSION = 1
APP_LABEL = "vterm_sessions"
USER_FIELDS = ["username", "password", "email", "first_name", "last_name", "is_staff", "is_superuser", "is_active",
               "date_joined", "last_login"]


class BackupError(Exception):
    """A backup file that cannot be restored here, or a target that is not ready for it."""


def app_models() -> list[type[Model]]:
    """The sessions app's models, each after those it refers to."""
    models = list(apps.get_app_config(APP_LABEL).get_models())
    return serializers.sort_dependencies([(apps.get_app_config(APP_LABEL), models)])


def _users_to_keep():
    """Users that own or did something vterm keeps: session owners, token holders, audit actors."""
    from .models import AuditEvent

    User = get_user_model()
    owners = TerminalSession.objects.values("owner_id")
    holders = Token.objects.values("user_id")
    actors = AuditEvent.objects.exclude(user=None).values("user_id")
    return User.objects.filter(Q(pk__in=owners) | Q(pk__in=holders) | Q(pk__in=actors)).order_by("username")


class _FullPrecisionEncoder(DjangoJSONEncoder):
    """Times with their microseconds (DjangoJSONEncoder, like dumpdata, keeps milliseconds only)."""

    def default(self, o):
        if isinstance(o, datetime):
            return o.isoformat()
        return super().default(o)


def _serialize(queryset, **kw) -> list[dict]:
    # The "python" serializer keeps datetimes as objects (encoded whole below); binary fields become base64.
    return serializers.serialize("python", queryset, use_natural_foreign_keys=True, use_natural_primary_keys=True,
                                 **kw)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _read_streams(session_ids: list[str]) -> dict[str, list]:
    r = sync_client()
    streams = {}
    for sid in session_ids:
        entries = r.xrange(output_stream_key(sid))
        if entries:
            streams[sid] = [[eid.decode(), {_b64(k): _b64(v) for k, v in fields.items()}] for eid, fields in entries]
    return streams


def backup_collect() -> dict[str, Any]:
    """The backup document, read from the database and Redis now."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        objects = _serialize(_users_to_keep(), fields=USER_FIELDS)
        objects += _serialize(Token.objects.order_by("key"))
        for model in app_models():
            objects += _serialize(model.objects.order_by("pk"))
        live = [str(pk) for pk in TerminalSession.objects.filter(status__in=TerminalSession.LIVE)
                .values_list("pk", flat=True)]
    streams = _read_streams(live)
    counts = Counter(o["model"] for o in objects)
    return {
        "format": FORMAT, "version": VERSION, "created_at": datetime.now(UTC).isoformat(),
        "database_vendor": connection.vendor,
        "counts": {**dict(sorted(counts.items())), "redis.output_streams": len(streams),
                   "redis.output_entries": sum(len(e) for e in streams.values())},
        "objects": objects,
        "redis": {"output_streams": streams},
    }


def backup_write(path: str | os.PathLike) -> dict[str, int]:
    """Write a backup to ``path`` (owner-only: it holds API tokens and password hashes); its counts."""
    doc = backup_collect()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    raw = os.fdopen(fd, "wb")
    with (gzip.GzipFile(fileobj=raw, mode="wb") if path.suffix == ".gz" else raw) as f:
        f.write(json.dumps(doc, cls=_FullPrecisionEncoder, ensure_ascii=False).encode("utf-8"))
    if path.suffix == ".gz":
        raw.close()
    os.replace(tmp, path)
    return doc["counts"]


def backup_read(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            data = gzip.GzipFile(fileobj=f).read() if head == b"\x1f\x8b" else f.read()
        doc = json.loads(data)
    except (OSError, ValueError, EOFError) as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path} is not a vterm backup")
    if doc.get("version") != VERSION:
        raise BackupError(f"{path} is backup format version {doc.get('version')}; this vterm reads {VERSION}")
    return doc


def _has_data() -> list[str]:
    return [m._meta.label for m in app_models() if m.objects.exists()]


def _wipe_app_tables() -> None:
    for model in reversed(app_models()):
        model.objects.all().delete()


def backup_restore(path: str | os.PathLike, *, replace: bool = False) -> dict[str, int]:
    """Load a backup into this database and Redis; the counts restored.

    Users are matched by username (existing ones are updated), tokens by key. The sessions
    app's tables must be empty, or ``replace`` empties them first. Output streams of the
    restored sessions are replaced in Redis.
    """
    doc = backup_read(path)
    counts: Counter[str] = Counter()
    with transaction.atomic():
        present = _has_data()
        if present and not replace:
            raise BackupError(f"the database already holds vterm data ({', '.join(present)}); restore into an "
                              "empty database, or pass --replace to delete vterm's rows first")
        if replace:
            _wipe_app_tables()
        models = set()
        for obj in serializers.deserialize("python", doc["objects"], handle_forward_references=True):
            obj.save()
            models.add(type(obj.object))
            counts[obj.object._meta.label_lower] += 1
        # Rows came with their ids: move the id sequences past them (PostgreSQL), as loaddata does.
        sql = connection.ops.sequence_reset_sql(no_style(), list(models))
        if sql:
            with connection.cursor() as cur:
                for statement in sql:
                    cur.execute(statement)
    streams = doc.get("redis", {}).get("output_streams", {})
    r = sync_client()
    pipe = r.pipeline(transaction=False)
    for sid, entries in streams.items():
        key = output_stream_key(sid)
        pipe.delete(key)
        for eid, fields in entries:
            pipe.xadd(key, {base64.b64decode(k): base64.b64decode(v) for k, v in fields.items()}, id=eid)
        counts["redis.output_entries"] += len(entries)
    pipe.execute()
    counts["redis.output_streams"] = len(streams)
    return dict(sorted(counts.items()))
