"""Periodic tasks of the runtime, declared here and synced into django-celery-beat on migrate."""

from __future__ import annotations

PERIODIC_TASKS = [
    {
        "name": "runtime: re-enqueue stalled conversations",
        "task": "runtime.conversations_sweep",
        "every_seconds": 30,
        "description": "Answers messages whose runner died or whose enqueue was lost.",
    },
]


def periodic_tasks_sync(**_: object) -> None:
    """Create or update the declared schedules; an operator's enable/disable choice is kept."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for spec in PERIODIC_TASKS:
        interval, _created = IntervalSchedule.objects.get_or_create(
            every=spec["every_seconds"], period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.update_or_create(
            name=spec["name"],
            defaults={"task": spec["task"], "interval": interval, "description": spec["description"]},
            create_defaults={
                "task": spec["task"],
                "interval": interval,
                "description": spec["description"],
                "enabled": True,
            },
        )
