"""End every sandboxed shell a data directory's backends left, and remove their cgroups.

For `make kill-shells` and the test stacks' teardown: after the tmux servers are gone, a
session's daemons may live on in its cgroup (a backend's next start would sweep them).

    python -m workers.sandbox.cleanup DATA_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .box import Sandbox
from .cgroups import CgroupError


def remove_backend_groups(data_dir: str | os.PathLike) -> int:
    """Kill and remove the groups of every backend under ``data_dir``; the number of shells ended."""
    ended = 0
    for backend_dir in sorted(Path(data_dir, "tmux").glob("*")):
        if not backend_dir.is_dir():
            continue
        sandbox = Sandbox(backend_id=backend_dir.name, state_dir=str(backend_dir / "sandbox"),
                          rc_host=str(backend_dir / "vterm.bashrc"))
        try:
            names = sandbox.names()
        except CgroupError:
            continue  # no cgroups here: nothing was sandboxed
        for name in names:
            sandbox.release(name)
            ended += 1
        sandbox.cgroups.remove()
    return ended


if __name__ == "__main__":
    print(f"{remove_backend_groups(sys.argv[1] if len(sys.argv) > 1 else 'var')} sandboxed shell(s) ended")
