"""Where work for a backend goes: the one place that turns an identity into a queue."""

import os
import socket

CONTROL_QUEUE = "vterm.control"
# Slow housekeeping (the retention purge): read by the control worker alone, never by a backend.
MAINTENANCE_QUEUE = "vterm.maintenance"
# Webhook POSTs (sessions/webhooks.py), which wait on other people's servers: the control worker's too.
WEBHOOK_QUEUE = "vterm.webhooks"


def local_backend_id() -> str:
    """This worker's backend id: VTERM_BACKEND_ID, else the host name (a pod's stable name)."""
    return os.environ.get("VTERM_BACKEND_ID") or socket.gethostname()


def backend_queue(backend_id: str) -> str:
    return f"backend.{backend_id}"
