"""What vterm keeps durably: backends, sessions, commands and what happened to them."""

import uuid

from django.conf import settings
from django.db import models


class Backend(models.Model):
    class Status(models.TextChoices):
        HEALTHY = "healthy"
        DRAINING = "draining"
        DEAD = "dead"

    id = models.CharField(primary_key=True, max_length=100)
    hostname = models.CharField(max_length=255)
    queue = models.CharField(max_length=120)
    capacity = models.PositiveIntegerField(default=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HEALTHY, db_index=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    # How its shells are isolated ("off", or e.g. "bubblewrap, cgroup v1, network host").
    sandbox = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id


class ShellAccount(models.Model):
    """A vterm user's OS identity for their shells (allocated once, never reused by another user)
    and, when staff set them, their per-session limits instead of the defaults (docs/security.md)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE,
                                related_name="shell_account")
    uid = models.PositiveIntegerField(unique=True, editable=False)
    max_processes = models.PositiveIntegerField(null=True, blank=True, help_text="empty: VTERM_SANDBOX_PROCESSES")
    memory_mb = models.PositiveIntegerField(null=True, blank=True, help_text="empty: VTERM_SANDBOX_MEMORY_MB")
    cpu_weight = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="1-10000, 100 an equal share; empty: VTERM_SANDBOX_CPU_WEIGHT")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})"


class TerminalSession(models.Model):
    class Status(models.TextChoices):
        INITIALIZING = "initializing"
        ACTIVE = "active"
        IDLE = "idle"
        MIGRATING = "migrating"
        TERMINATING = "terminating"
        TERMINATED = "terminated"
        LOST = "lost"

    LIVE = (Status.INITIALIZING, Status.ACTIVE, Status.IDLE, Status.MIGRATING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="terminal_sessions")
    backend = models.ForeignKey(Backend, null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions")
    # Fencing token: bumped on every placement, so a backend acting on an old placement is refused.
    epoch = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INITIALIZING, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    cwd = models.TextField(blank=True)
    env = models.JSONField(default=dict, blank=True)
    # The environment last read from its live shell (a drain): what a moved shell starts with.
    # Null: never read (the creation env is used). docs/failover.md
    live_env = models.JSONField(null=True, blank=True)
    live_env_at = models.DateTimeField(null=True, blank=True)
    cols = models.PositiveIntegerField(default=120)
    rows = models.PositiveIntegerField(default=40)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_activity = models.DateTimeField(auto_now_add=True)
    terminated_at = models.DateTimeField(null=True, blank=True)
    command_count = models.PositiveIntegerField(default=0)
    # Sampled by the backend: {"memory_bytes", "cpu_percent", "processes", "sampled_at"}, and from
    # its sandbox: {"oom_kills", "process_limit_hits"}.
    resource_usage = models.JSONField(default=dict, blank=True)
    # The sandbox limits it was created with: {"processes", "memory_mb", "cpu_weight"}.
    limits = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"])]

    def __str__(self) -> str:
        return self.name or str(self.id)

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE


class SessionEvent(models.Model):
    """A session's status history: every change, with its reason."""

    session = models.ForeignKey(TerminalSession, on_delete=models.CASCADE, related_name="events")
    status = models.CharField(max_length=16, choices=TerminalSession.Status.choices)
    reason = models.CharField(max_length=500, blank=True)
    backend = models.CharField(max_length=100, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["at", "id"]


class Command(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        TIMED_OUT = "timed_out"
        INTERRUPTED = "interrupted"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.INTERRUPTED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(TerminalSession, on_delete=models.CASCADE, related_name="commands")
    seq = models.PositiveIntegerField()
    command = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    reason = models.CharField(max_length=500, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    output = models.TextField(blank=True)
    output_raw = models.BinaryField(blank=True, default=b"")
    output_truncated = models.BooleanField(default=False)
    cwd = models.TextField(blank=True)
    timeout = models.FloatField(null=True, blank=True)
    idle_timeout = models.FloatField(null=True, blank=True)  # seconds without output before it is stopped
    submitted_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    # Where its end is POSTed (sessions/webhooks.py); empty: nowhere.
    notify_url = models.CharField(max_length=2048, blank=True, default="")

    class Meta:
        ordering = ["session", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="command_seq_unique")]
        # The webhook sweep's look for ended commands with no delivery yet: the few with a notify_url.
        indexes = [models.Index(fields=["finished_at"], condition=~models.Q(notify_url=""),
                                name="command_notify_finished")]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class AuditEvent(models.Model):
    """Who did what to which session, from where, when (kept when the session is gone)."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    username = models.CharField(max_length=150, blank=True, db_index=True)
    action = models.CharField(max_length=40, db_index=True)
    session_id = models.UUIDField(null=True, blank=True, db_index=True)
    remote_addr = models.CharField(max_length=100, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.session_id or ''}"


class WebhookSecret(models.Model):
    """A user's webhook signing secret, in the Standard Webhooks form ``whsec_<base64>``."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE,
                                related_name="webhook_secret")
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user} (since {self.created_at:%Y-%m-%d %H:%M:%S})"


class WebhookDelivery(models.Model):
    """One command's end POSTed to its notify_url: tried until it is taken or given up (sessions/webhooks.py)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)  # webhook-id: msg_<hex>
    command = models.OneToOneField(Command, on_delete=models.CASCADE, related_name="webhook_delivery")
    url = models.CharField(max_length=2048)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # When the next attempt is due (null once delivered or failed), and until when one that was
    # handed to Celery is its alone (a lost task is handed out again after that).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"msg_{self.pk.hex}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: its answer's status code, or the error that stopped it."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    at = models.DateTimeField()
    address = models.CharField(max_length=100, blank=True)  # the IP address connected to
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]


class Job(models.Model):
    """A background process of a session (sessions/jobs.py): it runs beside the shell, not in it.

    Its output is in Redis while it runs (the web may be on another machine than the backend) and
    here once it has ended."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        TIMED_OUT = "timed_out"
        KILLED = "killed"
        INTERRUPTED = "interrupted"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.KILLED, Status.INTERRUPTED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(TerminalSession, on_delete=models.CASCADE, related_name="jobs")
    command = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True)
    reason = models.CharField(max_length=500, blank=True)
    # As the session sees it (inside its sandbox's PID namespace); null until started, or when it
    # ended before saying it.
    pid = models.IntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    timeout = models.FloatField(null=True, blank=True)
    cwd = models.TextField(blank=True)
    backend = models.CharField(max_length=100, blank=True)
    epoch = models.PositiveIntegerField(default=0)  # the session's placement it runs under
    output = models.BinaryField(blank=True, default=b"")  # UTF-8, at most VTERM_OUTPUT_LIMIT bytes
    output_truncated = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)  # null until its backend has started it
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["session", "status"])]

    def __str__(self) -> str:
        return f"{self.session_id} job {self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL
