from django.urls import path

from . import api, jobs_api, pool_api, webhook_api
from .failover_api import BackendDrainView

urlpatterns = [
    path("backends/", pool_api.BackendListView.as_view(), name="backend-list"),
    path("pool/", pool_api.PoolView.as_view(), name="pool"),
    path("sessions/", api.SessionListView.as_view(), name="session-list"),
    path("sessions/<uuid:session_id>/", api.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<uuid:session_id>/commands/", api.CommandListView.as_view(), name="command-list"),
    path("sessions/<uuid:session_id>/commands/<uuid:command_id>/", api.CommandDetailView.as_view(),
         name="command-detail"),
    path("sessions/<uuid:session_id>/commands/<uuid:command_id>/output", api.CommandOutputView.as_view(),
         name="command-output"),
    path("sessions/<uuid:session_id>/commands/<uuid:command_id>/interrupt/", api.CommandInterruptView.as_view(),
         name="command-interrupt"),
    path("sessions/<uuid:session_id>/input/", api.SessionInputView.as_view(), name="session-input"),
    path("sessions/<uuid:session_id>/screen/", api.SessionScreenView.as_view(), name="session-screen"),
    path("sessions/<uuid:session_id>/resize/", api.SessionResizeView.as_view(), name="session-resize"),
    path("backends/<str:backend_id>/drain/", BackendDrainView.as_view(), name="backend-drain"),
    path("webhooks/secret/", webhook_api.WebhookSecretView.as_view(), name="webhook-secret"),
    path("sessions/<uuid:session_id>/jobs/", jobs_api.JobListView.as_view(), name="job-list"),
    path("sessions/<uuid:session_id>/jobs/<uuid:job_id>/", jobs_api.JobDetailView.as_view(), name="job-detail"),
    path("sessions/<uuid:session_id>/jobs/<uuid:job_id>/output/", jobs_api.JobOutputView.as_view(), name="job-output"),
    path("sessions/<uuid:session_id>/jobs/<uuid:job_id>/kill/", jobs_api.JobKillView.as_view(), name="job-kill"),
    path("sessions/<uuid:session_id>/recording.cast", api.SessionRecordingView.as_view(), name="session-recording"),
]
