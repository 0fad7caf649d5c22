"""The Celery app: web nodes publish with it, backend workers consume with it."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vterm_project.settings")

app = Celery("vterm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
