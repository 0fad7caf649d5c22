"""What a backend's threads and failover steps may touch of its runtime, and nothing more.

The runtime (workers/backend.py) builds one ``RuntimeParts`` and hands it to the inbox, the
hand-off check, the environment tracker, the jobs and the failover steps (workers/failover_runtime.py).
They depend on this module, not on the runtime: none of them imports workers/backend.py, which
imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from .command_ledger import CommandLedger
from .tmux.pool import TmuxPool


@dataclass(eq=False)
class RuntimeParts:
    backend_id: str
    # The backend's tmux servers, behind the driver interface (a lost one is started again inside it).
    driver: TmuxPool
    ledger: CommandLedger
    # Held while a session's shell is (re)built and while its inbox messages are carried out.
    session_lock: Callable[[str], AbstractContextManager]
    # Queue a database write behind the ones before it (the runtime's writer thread).
    write: Callable[[Callable[[], None]], None]
    # Wait until every database write queued so far is done.
    flush_writes: Callable[[], None]
    # What the web said of a command it sent (the inbox's message): its end is written without a read.
    remember_command: Callable[[dict], None]
    # (session id, command id, reason): a command for a shell that is not here ends interrupted.
    command_lost: Callable[[str, str, str], None]
