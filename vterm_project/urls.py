from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from sessions import health, metrics_view

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    # django-prometheus' series plus vterm's, for scrapers only (sessions/metrics_view.py).
    path("metrics", metrics_view.metrics, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("sessions.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    path("api-auth/", include("rest_framework.urls")),
    # The browser pages: login, your sessions, the terminal (sessions/pages.py).
    path("", include("sessions.page_urls")),
]

# JSON, not an HTML page, for /api/ paths (e.g. a session id that is not a UUID).
handler404 = "sessions.http_errors.handler404"
handler500 = "sessions.http_errors.handler500"
