from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RuntimeConfig(AppConfig):
    name = "apps.runtime"
    label = "runtime"
    verbose_name = "Agent runtime"

    def ready(self) -> None:
        from apps.runtime.schedules import periodic_tasks_sync

        # Periodic tasks live in code; migrate syncs them into django-celery-beat (idempotent).
        post_migrate.connect(periodic_tasks_sync, sender=self, dispatch_uid="runtime.periodic_tasks_sync")
