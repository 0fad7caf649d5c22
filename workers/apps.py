from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Backend workers"

    def ready(self) -> None:
        from . import celery_hooks  # noqa: F401  (connects the worker's signals)
