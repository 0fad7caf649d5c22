import logging
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from vterm_project.local_scaler import LocalScaler


class Command(BaseCommand):
    help = ("Start and stop backend worker processes on this machine to follow the autoscaler's desired "
            "count (the local executor of `make run`; vterm_project/local_scaler.py).")

    def add_arguments(self, parser):
        parser.add_argument("--prefix", default=os.environ.get("VTERM_BACKEND_PREFIX", "backend"),
                            help="backend ids are PREFIX-N")
        parser.add_argument("--base", type=int, default=int(os.environ.get("VTERM_BACKENDS", "2")),
                            help="PREFIX-1..BASE are the stack's own backends, never stopped here")
        parser.add_argument("--drain-timeout", type=float, default=120.0)
        parser.add_argument("--poll", type=float, default=1.0)

    def handle(self, prefix, base, drain_timeout, poll, **options):
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        env = {k: v for k, v in os.environ.items() if k != "VTERM_BACKEND_ID"}
        scaler = LocalScaler(prefix=prefix, base_backends=base, log_dir=Path(settings.DATA_DIR) / "logs", env=env,
                             poll=poll, drain_timeout=drain_timeout)
        self.stderr.write(f"local scaler: following the desired backend count ({prefix}-{base + 1}... are mine)")
        scaler.run_forever()
