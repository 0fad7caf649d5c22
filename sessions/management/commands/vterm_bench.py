"""`manage.py vterm_bench`: the load generator (logic in vterm_project/bench/)."""

from __future__ import annotations

import logging

from django.core.management.base import BaseCommand, CommandError

from vterm_project.bench import report
from vterm_project.bench.peers import PeerConfig
from vterm_project.bench.runner import BenchConfig, histogram_series, run_bench


class Command(BaseCommand):
    help = ("Simulated users against vterm: create sessions, run commands at a rate over REST and the "
            "WebSocket, report latency (with the bare tmux+bash floor), throughput, errors, memory, CPU.")

    def add_arguments(self, parser):
        parser.add_argument("--sessions", type=int, default=10, help="sessions to create (default 10)")
        parser.add_argument("--rate", type=float, default=1.0, help="commands per second per session (default 1)")
        parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
        parser.add_argument("--channel", choices=["rest", "ws", "both"], default="both",
                            help="how sessions run commands; both: alternate sessions (default)")
        parser.add_argument("--mixed", action="store_true",
                            help="one session streams output, 10%% run at 10x the rate, the rest are quiet; "
                                 "the noise starts halfway, so quiet sessions are measured with and without it")
        parser.add_argument("--url", help="an existing stack (default: start one)")
        parser.add_argument("--token", help="API token for --url")
        parser.add_argument("--backends", type=int, default=2, help="backend workers of a started stack")
        parser.add_argument("--web-processes", type=int, default=2,
                            help="web processes of a started stack (default 2, as `make run`)")
        parser.add_argument("--redis-url", help="Redis for a started stack (default: a private redis-server)")
        parser.add_argument("--data-dir", help="data dir of a started stack (default: a temporary one); with "
                                               "--url, that stack's, to measure its tmux memory")
        parser.add_argument("--create-concurrency", type=int, default=16, help="sessions created at once")
        parser.add_argument("--floor-samples", type=int, default=200)
        parser.add_argument("--wait", type=float, default=30.0, help="the `wait` of each command, seconds")
        parser.add_argument("--keep", action="store_true", help="leave the sessions and the stack's data")
        parser.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                            help="environment for a started stack's processes (repeatable)")
        parser.add_argument("--peers", action="store_true",
                            help="also measure vterm beside SWE-ReX (`true` in a session) and terminado (keystroke "
                                 "echo, cat to a viewer) on this machine; needs the bench extra (make bench)")
        parser.add_argument("--peer-calls", type=int, default=200, help="`true` commands per side (default 200)")
        parser.add_argument("--peer-keys", type=int, default=200, help="keystrokes per side (default 200)")
        parser.add_argument("--peer-mb", type=float, default=55.0, help="MB the cat writes out (default 55)")
        parser.add_argument("--json", dest="json_path", help="write every figure (and each sample) here")
        parser.add_argument("--histogram", help="draw the latency histogram to this PNG")

    def handle(self, *args, **o):
        if o["sessions"] < 1 or o["rate"] < 0 or o["duration"] <= 0:
            raise CommandError("--sessions must be >= 1, --rate >= 0 and --duration > 0")
        if o["peer_calls"] < 1 or o["peer_keys"] < 1 or o["peer_mb"] <= 0:
            raise CommandError("--peer-calls and --peer-keys must be >= 1, --peer-mb > 0")
        if o["url"] and not o["token"]:
            raise CommandError("--token is needed with --url")
        bad = [e for e in o["stack_env"] if "=" not in e]
        if bad:
            raise CommandError(f"--stack-env wants NAME=VALUE, not {bad}")
        cfg = BenchConfig(
            sessions=o["sessions"], rate=o["rate"], duration=o["duration"],
            channels=["rest", "ws"] if o["channel"] == "both" else [o["channel"]], mixed=o["mixed"],
            url=o["url"], token=o["token"], backends=o["backends"], web_processes=o["web_processes"], redis_url=o["redis_url"],
            data_dir=o["data_dir"], create_concurrency=o["create_concurrency"],
            floor_samples=o["floor_samples"], wait=o["wait"], keep=o["keep"],
            stack_env=dict(e.split("=", 1) for e in o["stack_env"]),
            peers=PeerConfig(calls=o["peer_calls"], keys=o["peer_keys"], mb=o["peer_mb"]) if o["peers"] else None,
        )

        def say(line: str) -> None:
            self.stderr.write(line)
            self.stderr.flush()

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
        result = run_bench(cfg, say)
        self.stdout.write(report.render_table(result))
        if o["json_path"]:
            report.write_json(result, o["json_path"])
            self.stdout.write(f"JSON: {o['json_path']}")
        if o["histogram"]:
            title = (f"vterm: {cfg.sessions} sessions x {cfg.rate:g}/s, {cfg.duration:g} s"
                     f"{' mixed' if cfg.mixed else ''} ({result['when']})")
            report.write_histogram(histogram_series(result), result["floor"]["strict"]["p50"], o["histogram"], title)
            self.stdout.write(f"histogram: {o['histogram']}")
