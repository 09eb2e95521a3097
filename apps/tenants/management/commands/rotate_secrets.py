from django.core.management.base import BaseCommand, CommandError

from apps.tenants.key_rotation import secrets_rotate
from omniagent.crypto import keyring


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first key of OMNIAGENT_ENCRYPTION_KEYS. Put the new key "
        "first, keep the old ones after it, run this, then drop the old keys. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted, change nothing")
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, dry_run: bool, batch_size: int, **options):
        self.stdout.write(f"newest key: {keyring().current_id}")
        report = secrets_rotate(dry_run=dry_run, batch_size=batch_size)
        self.stdout.write(report.summary())
        if report.unreadable:
            raise CommandError(
                f"{len(report.unreadable)} values could not be decrypted with any key in OMNIAGENT_ENCRYPTION_KEYS; "
                "keep the key that sealed them in the ring"
            )
        if dry_run:
            self.stdout.write(self.style.WARNING("dry run: nothing was changed"))
        else:
            self.stdout.write(self.style.SUCCESS("every secret is under the newest key"))
