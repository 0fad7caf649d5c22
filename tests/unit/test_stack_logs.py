"""Picking a failed test's errors out of the stack's logs (tests/stack_logs.py)."""

from tests import stack_logs

LOG = """\
2026-11-30 14:53:25,800 ERROR django.request Service Unavailable: /readyz
2026-11-30 14:53:25,908 INFO celery.worker.consumer.connection Connected to redis://127.0.0.1:6379/15
2026-11-30 14:53:26,001 ERROR celery.utils.dispatch.signal backend start failed (attempt 1 of 3)
Traceback (most recent call last):
  File "/work/main/workers/tmux/driver.py", line 176, in start
    os.makedirs(self._dir, mode=0o700, exist_ok=True)
FileExistsError: [Errno 17] File exists: '/tmp/x/tmux/boot-1'
2026-11-30 14:53:27,063 INFO workers.backend backend boot-1 up: tmux /tmp/x/tmux.sock, 0 shell(s) adopted
2026-11-30 14:53:28,000 CRITICAL workers.celery_hooks backend could not start; the worker exits
"""


def test_keeps_tracebacks_and_error_lines_only():
    assert stack_logs.error_lines(LOG) == LOG.splitlines()[2:7] + LOG.splitlines()[8:9]


def test_reports_only_what_was_logged_after_the_offsets(tmp_path):
    log = tmp_path / "boot-1.log"
    log.write_text("2026-11-30 14:00:00,000 ERROR x an error from before the test\n")
    stack_logs.watch(tmp_path)
    start = stack_logs.offsets()
    assert stack_logs.errors_since(start) == ""
    with open(log, "a") as f:
        f.write(LOG)
    report = stack_logs.errors_since(start)
    assert report.splitlines()[0] == f"--- {log}"
    assert "FileExistsError" in report and "from before the test" not in report
