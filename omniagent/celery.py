"""Celery app: JSON only, beat on django-celery-beat's DatabaseScheduler (see settings)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omniagent.settings")

app = Celery("omniagent")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
