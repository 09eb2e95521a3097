from django.core.management.base import BaseCommand, CommandError

from apps.tenants.provisioning import ProvisionError, provision_file


class Command(BaseCommand):
    help = (
        "Create or update tenants, admins, API keys, agents, bots and bindings from a YAML file "
        "(see config/demo.example.yaml). ${NAME} is read from the environment. Idempotent; all or nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="provisioning YAML file")
        parser.add_argument("--dry-run", action="store_true", help="check and report, then roll everything back")

    def handle(self, *args, file: str, dry_run: bool, **options):
        try:
            report = provision_file(path=file, dry_run=dry_run)
        except ProvisionError as exc:
            raise CommandError(f"provision failed, nothing applied: {exc}") from None
        self.stdout.write(report.summary())
        if dry_run:
            self.stdout.write(self.style.WARNING("dry run: nothing was applied"))
        elif report.changed:
            self.stdout.write(self.style.SUCCESS(f"applied {file}"))
        else:
            self.stdout.write(self.style.SUCCESS(f"{file}: already up to date"))
