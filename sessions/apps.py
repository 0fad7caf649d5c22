from django.apps import AppConfig


class TerminalSessionsConfig(AppConfig):
    name = "sessions"
    # django.contrib.sessions owns the label "sessions".
    label = "vterm_sessions"
    verbose_name = "Terminal sessions"
    default_auto_field = "django.db.models.BigAutoField"
