"""Commands whose hand-off to this backend was lost: found in the database, run from there.

A command is recorded in the database, then handed to its backend by an RPUSH on the backend's
inbox (workers/inbox.py). Redis replicates asynchronously: an RPUSH the primary acknowledged
and then died with, before a replica had it, is gone after the failover, and the command would
stay ``queued`` for ever. The database row is the record (docs/failover.md, "What a 201 means"):
every HANDOFF_CHECK_INTERVAL seconds this thread looks for commands queued here for longer than
HANDOFF_GRACE that this backend never received (its ledger of command ids), and runs them, in
order, under the session's lock as the inbox does; one a later command has overtaken ends
``interrupted`` with the reason (sessions/failover.py).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections

from sessions import failover

from . import failover_runtime
from .tmux.driver import ShellError

if TYPE_CHECKING:
    from .runtime_parts import RuntimeParts

log = logging.getLogger(__name__)


class HandoffCheck(threading.Thread):
    def __init__(self, parts: RuntimeParts, stop: threading.Event) -> None:
        super().__init__(name="vterm-handoff", daemon=True)
        self.parts, self.stop = parts, stop

    def run(self) -> None:
        while not self.stop.wait(settings.VTERM["HANDOFF_CHECK_INTERVAL"]):
            try:
                self.check()
            except Exception:
                log.warning("hand-off check failed", exc_info=True)
                close_old_connections()

    def check(self) -> int:
        """Run the lost hand-offs found now; how many."""
        parts, received = self.parts, self.parts.ledger.received
        ran = 0
        for session_id in failover.sessions_with_unreceived_commands(backend_id=parts.backend_id, received=received):
            with parts.session_lock(session_id):
                for cmd in failover.session_handoffs_lost(session_id=session_id, backend_id=parts.backend_id,
                                                          received=received):
                    try:
                        failover_runtime.queue_command(parts.driver, parts.ledger, session_id, cmd)
                        ran += 1
                    except ShellError:
                        break  # no shell here: the reconcile moves the session, its commands with it
        return ran
