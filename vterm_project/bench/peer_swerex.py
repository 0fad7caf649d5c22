"""SWE-ReX (the runtime under SWE-agent) as a peer for the command figure: its ``swerex-remote`` server
on 127.0.0.1 and its ``RemoteRuntime`` client, as its published package documents.

The figure is the one vterm's REST route is measured by: `true` in a persistent bash session (SWE-ReX's
``run_in_session`` with a ``BashAction``, what SWE-agent does per step), one call after the other.
Needs the ``bench`` extra (``pip install -e ".[bench]"``: swe-rex).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from typing import Self


class SweRexServer:
    """``swerex-remote`` as a child process, for the span of a ``with`` block."""

    def __init__(self, port: int, cwd: str) -> None:
        self.port, self.cwd = port, cwd
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(cwd, "swerex.log")

    def __enter__(self) -> Self:
        exe = shutil.which("swerex-remote", path=os.path.dirname(sys.executable)) or shutil.which("swerex-remote")
        if exe is None:
            raise RuntimeError("swerex-remote is not installed (pip install -e '.[bench]')")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "--host", "127.0.0.1", "--port", str(self.port),
                                          "--auth-token", self.token],
                                         cwd=self.cwd, env={**os.environ, "HOME": self.cwd},
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _command_latency(port: int, token: str, n: int, warmup: int) -> list[float]:
    from swerex.runtime.abstract import BashAction, CloseBashSessionRequest, CreateBashSessionRequest
    from swerex.runtime.remote import RemoteRuntime

    runtime = RemoteRuntime(host="http://127.0.0.1", port=port, auth_token=token, timeout=60)
    await runtime.wait_until_alive(timeout=60)
    await runtime.create_session(CreateBashSessionRequest(session="bench"))
    times = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            obs = await runtime.run_in_session(BashAction(command="true", session="bench", check="raise"))
            ms = (time.perf_counter() - t0) * 1000
            if obs.exit_code != 0:
                raise RuntimeError(f"SWE-ReX: `true` exited {obs.exit_code}: {obs.output[:200]}")
            if i >= warmup:
                times.append(ms)
    finally:
        await runtime.close_session(CloseBashSessionRequest(session="bench"))
    return times


def command_latency(server: SweRexServer, n: int, warmup: int = 20) -> list[float]:
    """`true` in SWE-ReX's persistent bash session, ``n`` calls in a row (ms)."""
    return asyncio.run(_command_latency(server.port, server.token, n, warmup))
