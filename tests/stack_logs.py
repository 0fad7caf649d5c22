"""The errors a live stack's processes logged while a test ran, for that test's failure report.

A test against a live stack often fails far from the cause (a worker's traceback in its own
log), and CI keeps only pytest's output: a failed test's report carries those errors.
"""

from __future__ import annotations

from pathlib import Path

_LOG_DIRS: list[Path] = []  # of every stack the tests made
MAX_LINES = 60  # per log file, the last ones
# Django logs every 5xx at ERROR: /readyz answers 503 until the stack is up, which is no error.
NOT_ERRORS = "Service Unavailable: /readyz"


def watch(log_dir: Path) -> None:
    _LOG_DIRS.append(Path(log_dir))


def _logs() -> list[Path]:
    return sorted(f for d in _LOG_DIRS for f in d.glob("*.log"))


def offsets() -> dict[Path, int]:
    """How far each log file has been written, so that a report holds only what came after."""
    return {f: f.stat().st_size for f in _logs()}


def errors_since(start: dict[Path, int]) -> str:
    out: list[str] = []
    for f in _logs():
        with open(f, "rb") as fh:
            fh.seek(start.get(f, 0))
            lines = error_lines(fh.read().decode("utf-8", "replace"))
        if lines:
            out += [f"--- {f}", *lines[-MAX_LINES:]]
    return "\n".join(out)


def error_lines(text: str) -> list[str]:
    """Tracebacks and the lines logged at ERROR or CRITICAL."""
    keep: list[str] = []
    in_traceback = False
    for line in text.splitlines():
        if line.startswith("Traceback "):
            in_traceback = True
            keep.append(line)
        elif in_traceback:
            keep.append(line)
            in_traceback = line.startswith((" ", "\t"))  # the exception's own line ends it
        elif (" ERROR " in line or " CRITICAL " in line) and NOT_ERRORS not in line:
            keep.append(line)
    return keep
