import json

from django.contrib import admin, messages
from django.http import StreamingHttpResponse

from . import failover, services
from .audit import audit_export_lines, request_addr
from .models import (
    AuditEvent,
    Backend,
    Command,
    Job,
    SessionEvent,
    ShellAccount,
    TerminalSession,
    WebhookAttempt,
    WebhookDelivery,
)
from .resource_usage import human_bytes, usage_order
from .sandbox import user_limits


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = ["id", "hostname", "status", "capacity", "live_sessions", "sandbox", "last_heartbeat",
                    "started_at"]
    list_filter = ["status"]
    search_fields = ["id", "hostname"]
    readonly_fields = ["registered_at", "started_at", "last_heartbeat", "queue", "sandbox"]
    actions = ["drain"]

    @admin.action(description="Drain: move their sessions elsewhere, place no new ones")
    def drain(self, request, queryset):
        for backend in queryset:
            failover.backend_drain(backend, by=f"requested by {request.user.username} (admin)")
        self.message_user(request, f"{queryset.count()} backend(s) draining.", messages.SUCCESS)

    @admin.display(description="live sessions")
    def live_sessions(self, obj):
        return obj.sessions.filter(status__in=TerminalSession.LIVE).count()


class SessionEventInline(admin.TabularInline):
    model = SessionEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "status", "reason", "backend"]


class CommandInline(admin.TabularInline):
    model = Command
    extra = 0
    can_delete = False
    fields = ["seq", "command", "status", "exit_code", "cwd", "duration_ms", "submitted_at"]
    readonly_fields = fields
    ordering = ["-seq"]
    show_change_link = True
    max_num = 0


@admin.register(TerminalSession)
class TerminalSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "status", "backend", "command_count", "memory", "cpu", "processes",
                    "created_at", "last_activity"]
    list_filter = ["status", "backend", "created_at"]
    search_fields = ["id", "name", "owner__username", "cwd"]
    readonly_fields = ["id", "owner", "backend", "epoch", "status", "status_reason", "created_at", "last_activity",
                       "terminated_at", "command_count", "limits", "limit_events", "resource_usage", "live_env",
                       "live_env_at"]
    list_select_related = ["owner", "backend"]
    inlines = [SessionEventInline, CommandInline]
    actions = ["terminate"]

    # Resource usage as sampled by the backend (workers/resource_usage.py), sortable: which session eats the machine.
    @admin.display(description="memory (PSS)", ordering=usage_order("pss_bytes"))
    def memory(self, obj):
        usage = obj.resource_usage or {}
        return human_bytes(usage.get("pss_bytes") if usage.get("pss_bytes") is not None else usage.get("memory_bytes"))

    @admin.display(description="CPU %", ordering=usage_order("cpu_percent", float_=True))
    def cpu(self, obj):
        value = (obj.resource_usage or {}).get("cpu_percent")
        return "-" if value is None else f"{value:.1f}"

    @admin.display(description="sandbox limits hit")
    def limit_events(self, obj):
        usage = obj.resource_usage or {}
        return (f"{usage.get('oom_kills', 0)} process(es) killed at the memory limit, "
                f"{usage.get('process_limit_hits', 0)} fork(s) refused at the process limit")

    @admin.display(description="procs", ordering=usage_order("processes"))
    def processes(self, obj):
        value = (obj.resource_usage or {}).get("processes")
        return "-" if value is None else value

    @admin.action(description="Terminate selected sessions")
    def terminate(self, request, queryset):
        n = 0
        for session in queryset.select_related("backend"):
            if session.is_live:
                services.session_terminate(session, reason=f"terminated by {request.user.username} (admin)",
                                           by=request.user, remote_addr=request_addr(request), via="admin")
                n += 1
        self.message_user(request, f"{n} session(s) terminating.", messages.SUCCESS)


@admin.register(ShellAccount)
class ShellAccountAdmin(admin.ModelAdmin):
    """Each user's shell uid and per-session limits (empty: the defaults, VTERM_SANDBOX_*)."""

    list_display = ["user", "uid", "max_processes", "memory_mb", "cpu_weight", "effective"]
    search_fields = ["user__username", "uid"]
    readonly_fields = ["user", "uid", "created_at", "effective"]

    def has_add_permission(self, request):
        return False  # allocated with the user's first session

    @admin.display(description="limits in force")
    def effective(self, obj):
        return ", ".join(f"{k} {v}" for k, v in user_limits(obj).items())


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
    list_display = ["id", "session", "seq", "short_command", "status", "exit_code", "duration_ms", "submitted_at"]
    list_filter = ["status", "submitted_at"]
    search_fields = ["id", "command", "session__id", "session__owner__username"]
    list_select_related = ["session"]
    exclude = ["output_raw"]
    readonly_fields = [f.name for f in Command._meta.fields if f.name != "output_raw"]

    @admin.display(description="command")
    def short_command(self, obj):
        return obj.command if len(obj.command) <= 60 else obj.command[:57] + "..."


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ["at_seconds", "address", "status_code", "error", "duration"]
    max_num = 0

    @admin.display(description="at")
    def at_seconds(self, obj):
        return f"{obj.at:%Y-%m-%d %H:%M:%S} UTC" if obj.at else "-"

    @admin.display(description="took")
    def duration(self, obj):
        return "-" if obj.duration_ms is None else f"{obj.duration_ms:.0f} ms"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Completion webhooks (sessions/webhooks.py): each command's delivery and its attempts."""

    list_display = ["webhook_id", "command", "url", "status", "attempts", "created_at", "next_attempt_at",
                    "last_error"]
    list_filter = ["status", "created_at"]
    search_fields = ["id", "url", "command__id", "command__session__owner__username"]
    list_select_related = ["command"]
    fields = readonly_fields = ["webhook_id", "command", "url", "status", "attempts", "created_at",
                                "next_attempt_at", "finished_at", "last_error"]
    inlines = [WebhookAttemptInline]

    def has_add_permission(self, request):
        return False

    @admin.display(description="webhook-id")
    def webhook_id(self, obj):
        return str(obj)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Background jobs, read-only (their output: GET …/jobs/{id}/output/)."""

    list_display = ["id", "session", "short_command", "status", "exit_code", "pid", "backend", "started_at",
                    "ended_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["id", "command", "session__id", "session__owner__username"]
    list_select_related = ["session"]
    exclude = ["output"]
    readonly_fields = [f.name for f in Job._meta.fields if f.name != "output"]

    @admin.display(description="command")
    def short_command(self, obj):
        return obj.command if len(obj.command) <= 60 else obj.command[:57] + "..."


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail: read-only, filterable, exportable as JSON lines (sessions/audit.py)."""

    list_display = ("at", "username", "action", "session_id", "remote_addr", "short_detail")
    list_filter = ("action", "at", "username")
    search_fields = ("username", "action", "session_id", "remote_addr")
    date_hierarchy = "at"
    readonly_fields = ("at", "user", "username", "action", "session_id", "remote_addr", "detail")
    actions = ("export_jsonl",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="detail")
    def short_detail(self, obj):
        text = json.dumps(obj.detail, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."

    @admin.action(description="Export selected events as JSON lines")
    def export_jsonl(self, request, queryset):
        response = StreamingHttpResponse(audit_export_lines(queryset.order_by("at", "id").iterator()),
                                         content_type="application/x-ndjson")
        response["Content-Disposition"] = 'attachment; filename="vterm-audit.jsonl"'
        return response
