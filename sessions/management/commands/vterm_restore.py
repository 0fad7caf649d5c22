from django.core.management.base import BaseCommand, CommandError

from sessions.backup import BackupError, backup_restore


class Command(BaseCommand):
    help = ("Restore a vterm_backup file into this database and Redis (docs/backup.md). The sessions app's "
            "tables must be empty unless --replace is given; users are matched by username.")

    def add_arguments(self, parser):
        parser.add_argument("path", metavar="PATH")
        parser.add_argument("--replace", action="store_true",
                            help="delete vterm's existing sessions, commands, events and backends first")

    def handle(self, path, replace=False, **options):
        try:
            counts = backup_restore(path, replace=replace)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        for name, n in counts.items():
            self.stdout.write(f"{name:34} {n}")
        self.stderr.write(f"restored from {path}")
