from django.core.management.base import BaseCommand

from sessions.backup import backup_write


class Command(BaseCommand):
    help = ("Back up what vterm keeps: users that own things, API tokens, backends, sessions, commands, "
            "session and audit events, and the output streams of live sessions in Redis (docs/backup.md). "
            "PATH ending in .gz is gzipped. The file is readable by its owner only.")

    def add_arguments(self, parser):
        parser.add_argument("path", metavar="PATH")

    def handle(self, path, **options):
        counts = backup_write(path)
        for name, n in counts.items():
            self.stdout.write(f"{name:34} {n}")
        self.stderr.write(f"backup written to {path}")
