from django.core.management.base import BaseCommand

from apps.runtime.services import conversations_sweep


class Command(BaseCommand):
    help = "Re-enqueue conversations with unanswered messages and no live runner (the beat task; Celery mode)."

    def add_arguments(self, parser):
        parser.add_argument("--grace", type=int, default=15, help="ignore messages younger than this (seconds)")

    def handle(self, *args, grace: int, **options):
        count = conversations_sweep(grace_seconds=grace)
        self.stdout.write(f"re-enqueued {count} conversation(s)")
