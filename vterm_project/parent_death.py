"""Child processes that end with their parent (Linux prctl PR_SET_PDEATHSIG, man 2 prctl).

`make run`'s supervisord starts a killed process again. A child that outlived it would run on
beside the new one: Celery's embedded beat (`worker -B` runs it as a child process) would
schedule every periodic task twice, and a backend started by the local scaler would be started
again under the same id by the next scaler. Elsewhere (a container) the child dies with the
container anyway.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: a forked child must not dlopen (a lock another thread held may never be released).
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have ``signum`` sent to this process when its parent, ``parent_pid``, dies."""
    if _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:  # it died before the call above
        os.kill(os.getpid(), signum)


def dies_with_this_process(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen: the child gets ``signum`` when this process dies."""
    parent = os.getpid()
    return lambda: die_with_parent(parent, signum)
