"""vterm settings: everything that differs between machines comes from the environment."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from vterm_project import redis_config


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("VTERM_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("SECRET_KEY", "insecure-dev-only-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "sessions.apps.TerminalSessionsConfig",
    "workers.apps.WorkersConfig",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "vterm_project.urls"
ASGI_APPLICATION = "vterm_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# https://github.com/jazzband/dj-database-url
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'vterm.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes write: WAL lets readers go on, IMMEDIATE avoids lock upgrades
    # failing with "database is locked". https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-notes
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0 if env_bool("VTERM_SQLITE_NO_PERSIST", False) else 60
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
# Every login (admin, /login/, /api-auth/) goes through the throttled backend (docs/security.md).
AUTHENTICATION_BACKENDS = ["sessions.login_throttle.ThrottledModelBackend"]
# Largest request body; a bigger one is answered 413 before Django reads it (vterm_project/body_limit.py).
# https://docs.djangoproject.com/en/5.2/ref/settings/#data-upload-max-memory-size
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("VTERM_MAX_REQUEST_BYTES", 2 * 1024 * 1024)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"

# One Redis, or the master of a Redis Sentinel set: vterm_project/redis_config.py reads REDIS_URL,
# REDIS_SENTINEL_MASTER and REDIS_SENTINEL_PASSWORD and gives each client what it needs (docs/deploy.md).
REDIS_URL = os.environ.get("REDIS_URL") or redis_config.DEFAULT_URL
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "")
REDIS_SENTINEL_PASSWORD = os.environ.get("REDIS_SENTINEL_PASSWORD", "")
try:
    REDIS = redis_config.redis_target(REDIS_URL, master_name=REDIS_SENTINEL_MASTER,
                                      sentinel_password=REDIS_SENTINEL_PASSWORD)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None

# https://channels.readthedocs.io/en/latest/topics/channel_layers.html
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py >= 8 times out socket reads after 5 s by default, as long as channels-redis'
        # blocking receive (BZPOPMIN, 5 s): an idle WebSocket consumer would die with it.
        "CONFIG": {"hosts": [redis_config.channel_layer_host(REDIS, socket_timeout=30)], "capacity": 1000,
                   "expiry": 30, "prefix": "vterm:asgi"},
    }
}

# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = redis_config.celery_broker_url(REDIS)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # replies travel on Redis lists of our own (sessions/replies.py)
CELERY_TASK_DEFAULT_QUEUE = "vterm.control"
CELERY_WORKER_PREFETCH_MULTIPLIER = 16
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis redelivers unacknowledged tasks after this long (DESIGN.md §9).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "global_keyprefix": os.environ.get("VTERM_REDIS_PREFIX", ""),
                                   # Redis paused or gone: a publish fails in seconds (503), it does not hang.
                                   "socket_timeout": 3, "socket_connect_timeout": 2,
                                   # Sentinel: master_name and the sentinels' own options (kombu's transport).
                                   **redis_config.celery_transport_options(REDIS)}
# https://docs.celeryq.dev/en/stable/userguide/calling.html#retry-policy: bounded, so a request
# waits at most a few seconds for the broker before it answers 503 (docs/failover.md).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
# Task events cost a few Redis publishes per task; Flower turns them on while it runs
# (its --enable_events, on by default), so they are only paid for when someone watches.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("VTERM_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BEAT_SCHEDULE: dict = {
    # Dead backends, stuck migrations, idle sessions and orphans (sessions/failover.py).
    "pool-reconcile": {"task": "workers.tasks.pool_reconcile",
                       "schedule": env_float("VTERM_RECONCILE_INTERVAL", 3.0),
                       "options": {"expires": env_float("VTERM_RECONCILE_INTERVAL", 3.0)}},
    # The pool's autoscaler (sessions/autoscaler.py); executors follow its decision.
    "pool-autoscale": {"task": "workers.tasks.pool_autoscale",
                       "schedule": env_float("VTERM_AUTOSCALE_INTERVAL", 15.0),
                       "options": {"expires": env_float("VTERM_AUTOSCALE_INTERVAL", 15.0)}},
    # The retention purge (sessions/retention.py), on the maintenance queue that only the control
    # worker reads (workers/routing.py): a run never holds up a backend's session starts.
    "retention-purge": {"task": "workers.tasks.retention_purge",
                        "schedule": env_float("VTERM_RETENTION_INTERVAL", 60.0),
                        "options": {"queue": "vterm.maintenance",
                                    "expires": env_float("VTERM_RETENTION_INTERVAL", 60.0)}},
    # Webhook deliveries due (a retry hours away, or a task lost), handed out on the webhooks queue
    # that only the control worker reads (sessions/webhooks.py).
    "webhooks-due": {"task": "workers.tasks.webhooks_due",
                     "schedule": env_float("VTERM_WEBHOOK_SWEEP_INTERVAL", 10.0),
                     "options": {"queue": "vterm.webhooks",
                                 "expires": env_float("VTERM_WEBHOOK_SWEEP_INTERVAL", 10.0)}},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sessions.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "sessions.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "sessions.api_schema.VtermAutoSchema",  # documents the errors too
    "EXCEPTION_HANDLER": "sessions.api_errors.exception_handler",
    # JSON nested too deeply is a 400 (sessions/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["sessions.parsers.SafeJSONParser"],  # the API speaks JSON only (API.md)
}
SPECTACULAR_SETTINGS = {
    "TITLE": "vterm API",
    "DESCRIPTION": "Persistent terminal sessions: create sessions, run commands, read output.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs page need a user too (only /healthz and /readyz answer without one).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # 3.1: its schemas are JSON Schema, which can say what the server enforces (e.g. env names:
    # propertyNames, which 3.0 lacks). https://drf-spectacular.readthedocs.io/en/latest/settings.html
    "OAS_VERSION": "3.1.0",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # Two INFO lines per task ("received", "succeeded") at hundreds of commands a second.
        "celery.app.trace": {"level": os.environ.get("VTERM_TASK_LOG_LEVEL", "WARNING")},
        "celery.worker.strategy": {"level": os.environ.get("VTERM_TASK_LOG_LEVEL", "WARNING")},
    },
}

# --- vterm ----------------------------------------------------------------------
VTERM = {
    # This worker's identity; its queue name is derived from it (workers/routing.py).
    "BACKEND_ID": os.environ.get("VTERM_BACKEND_ID", ""),
    "BACKEND_CAPACITY": env_int("VTERM_BACKEND_CAPACITY", 200),
    "HEARTBEAT_INTERVAL": env_float("VTERM_HEARTBEAT_INTERVAL", 2.0),
    # A backend whose heartbeat is older than this is dead: with the reconcile every 3 s, a lost
    # backend is declared dead within 10 s (issue 5), after missing three heartbeats at least.
    "HEARTBEAT_TTL": env_float("VTERM_HEARTBEAT_TTL", 7.0),
    # After the whole pool was down (a `make run` restart), no backend is declared dead for this
    # long (or one HEARTBEAT_TTL, if longer): time for every worker to boot and adopt its shells.
    "POOL_START_GRACE": env_float("VTERM_POOL_START_GRACE", 20.0),
    "OUTPUT_LIMIT": env_int("VTERM_OUTPUT_LIMIT", 1 << 20),
    "COMMAND_MAX_BYTES": env_int("VTERM_COMMAND_MAX_BYTES", 64 * 1024),
    "INPUT_MAX_BYTES": env_int("VTERM_INPUT_MAX_BYTES", 64 * 1024),
    "MAX_WAIT": env_float("VTERM_MAX_WAIT", 300.0),
    "MAX_TIMEOUT": env_float("VTERM_MAX_TIMEOUT", 7 * 24 * 3600.0),
    "SESSION_START_TIMEOUT": env_float("VTERM_SESSION_START_TIMEOUT", 15.0),
    "RPC_TIMEOUT": env_float("VTERM_RPC_TIMEOUT", 5.0),
    # How commands, keystrokes, Ctrl-C and resizes reach a backend (workers/inbox.py): "redis", a list
    # of its own that one thread reads (workers/inbox.py); or "celery", a task each on its queue (seen in
    # Flower, slower, served in the queue's order).
    "HOT_CALLS": os.environ.get("VTERM_HOT_CALLS", "redis"),
    # Threads of a backend that carry out its inbox, serving its sessions in turn (one message of a
    # session at a time); and the keystrokes one session may have waiting there (characters).
    "INBOX_THREADS": env_int("VTERM_INBOX_THREADS", 4),
    "INBOX_SESSION_MAX_CHARS": env_int("VTERM_INBOX_SESSION_MAX_CHARS", 8 * 1024 * 1024),
    # The web process's threads for sync work, shared by Django's handler and the hot command route
    # (vterm_project/sync_threads.py).
    "WEB_SYNC_THREADS": env_int("VTERM_WEB_SYNC_THREADS", 8),
    # POST …/commands/ with a Bearer token served in front of Django's request cycle
    # (sessions/command_route.py); off: the DRF view serves it, for comparison.
    "COMMAND_ROUTE": env_bool("VTERM_COMMAND_ROUTE", True),
    "STREAM_MAXLEN": env_int("VTERM_STREAM_MAXLEN", 10000),
    # Seconds an ended session's output stream (its replay and its recording) is kept; 0: for ever.
    "STREAM_RETENTION": env_int("VTERM_STREAM_RETENTION", 7 * 24 * 3600),
    # The stream is also bounded in characters, and one frame holds at most OUTPUT_FRAME_MAX
    # (workers/output_frames.py): a flood such as `yes` cannot fill Redis nor make huge messages.
    "STREAM_MAX_CHARS": env_int("VTERM_STREAM_MAX_CHARS", 4 * 1024 * 1024),
    "OUTPUT_FRAME_MAX": env_int("VTERM_OUTPUT_FRAME_MAX", 64 * 1024),
    "OUTPUT_FLUSH_INTERVAL": env_float("VTERM_OUTPUT_FLUSH_INTERVAL", 0.005),
    # A session whose last send held this many bytes is flooding: it sends whole frames
    # (OUTPUT_FRAME_MAX), the rest once OUTPUT_FLOOD_WAIT seconds passed since its last send
    # (workers/output_frames.FloodPacer). 0 s: no flood pacing.
    "OUTPUT_FLOOD_BYTES": env_int("VTERM_OUTPUT_FLOOD_BYTES", 16 * 1024),
    "OUTPUT_FLOOD_WAIT": env_float("VTERM_OUTPUT_FLOOD_WAIT", 0.02),
    "SOURCE_USER_BASHRC": env_bool("VTERM_SOURCE_BASHRC", False),
    "SHELL_PATH": os.environ.get("VTERM_SHELL_PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    "REDIS_PREFIX": os.environ.get("VTERM_REDIS_PREFIX", ""),
    # Security (sessions/ratelimit.py, sessions/login_throttle.py; docs/security.md). 0 turns a limit off.
    "MAX_SESSIONS_PER_USER": env_int("VTERM_MAX_SESSIONS_PER_USER", 100),
    "QUOTA_RETRY_AFTER": env_int("VTERM_QUOTA_RETRY_AFTER", 10),
    # Token buckets per user, shared by all web nodes: tokens per second and burst.
    "COMMAND_RATE": env_float("VTERM_COMMAND_RATE", 100.0),
    "COMMAND_BURST": env_float("VTERM_COMMAND_BURST", 200.0),
    "INPUT_RATE": env_float("VTERM_INPUT_RATE", 200.0),
    "INPUT_BURST": env_float("VTERM_INPUT_BURST", 400.0),
    # The same for resizes (REST, WebSocket), Ctrl-C (REST and WebSocket `interrupt`), `GET …/screen/`
    # and recording downloads: each costs a database write, a backend call or a read of a whole stream.
    "RESIZE_RATE": env_float("VTERM_RESIZE_RATE", 5.0),
    "RESIZE_BURST": env_float("VTERM_RESIZE_BURST", 20.0),
    "INTERRUPT_RATE": env_float("VTERM_INTERRUPT_RATE", 5.0),
    "INTERRUPT_BURST": env_float("VTERM_INTERRUPT_BURST", 20.0),
    "SCREEN_RATE": env_float("VTERM_SCREEN_RATE", 20.0),
    "SCREEN_BURST": env_float("VTERM_SCREEN_BURST", 40.0),
    "RECORDING_RATE": env_float("VTERM_RECORDING_RATE", 0.2),
    "RECORDING_BURST": env_float("VTERM_RECORDING_BURST", 5.0),
    # Open WebSockets per user on all web nodes together (one more: close 4429). Each node renews
    # its connections' claims every WS_RECHECK_INTERVAL; those of a node that died lapse after
    # WS_CLAIM_SECONDS. The same round closes (4401) a connection whose user was deactivated, or
    # whose token or login ended (sessions/ws_watch.py).
    "WS_MAX_PER_USER": env_int("VTERM_WS_MAX_PER_USER", 20),
    "WS_CLAIM_SECONDS": env_int("VTERM_WS_CLAIM_SECONDS", 60),
    "WS_RECHECK_INTERVAL": env_float("VTERM_WS_RECHECK_INTERVAL", 5.0),
    # Keystrokes also spend a bucket of bytes (UTF-8 of `data`): requests alone let 64 KiB frames through.
    "INPUT_BYTES_RATE": env_float("VTERM_INPUT_BYTES_RATE", 1024 * 1024.0),
    "INPUT_BYTES_BURST": env_float("VTERM_INPUT_BYTES_BURST", 4 * 1024 * 1024.0),
    # Background jobs running at once in one session (sessions/jobs.py; one more: 429). 0: no cap.
    "MAX_JOBS_PER_SESSION": env_int("VTERM_MAX_JOBS_PER_SESSION", 10),
    # Results a user may be awaiting at once (REST `wait`, WebSocket `run`), on all web nodes together.
    # How long an Idempotency-Key is kept, per user (sessions/idempotency.py; docs/api.md).
    "IDEMPOTENCY_TTL": env_int("VTERM_IDEMPOTENCY_TTL", 24 * 3600),
    "MAX_PENDING_WAITS_PER_USER": env_int("VTERM_MAX_PENDING_WAITS_PER_USER", 200),
    # Failed logins per (username, client address) within the window before logins are refused.
    "LOGIN_MAX_FAILURES": env_int("VTERM_LOGIN_MAX_FAILURES", 5),
    "LOGIN_WINDOW": env_int("VTERM_LOGIN_WINDOW", 300),
    # Session recordings (asciicast) come from the output stream: the window's entries carry a time.
    "RECORDING_ENABLED": env_bool("VTERM_RECORDING", True),
    # Fault tolerance (sessions/failover.py, docs/failover.md).
    "RECONCILE_INTERVAL": env_float("VTERM_RECONCILE_INTERVAL", 3.0),
    "SESSION_IDLE_TTL": env_float("VTERM_SESSION_IDLE_TTL", 0.0),  # seconds; 0: idle sessions never end
    "ORPHAN_INTERVAL": env_float("VTERM_ORPHAN_INTERVAL", 30.0),  # backends compare shells with the database
    # A command still queued after HANDOFF_GRACE seconds that its backend never received had its
    # hand-off lost (a Redis failover); each backend looks every HANDOFF_CHECK_INTERVAL seconds and
    # runs it from the database (workers/handoff_check.py, docs/failover.md "What a 201 means").
    "HANDOFF_GRACE": env_float("VTERM_HANDOFF_GRACE", 5.0),
    "HANDOFF_CHECK_INTERVAL": env_float("VTERM_HANDOFF_CHECK_INTERVAL", 5.0),
    "MIGRATE_TIMEOUT": env_float("VTERM_MIGRATE_TIMEOUT", 30.0),  # a migration not done by then is retried
    "DRAIN_GRACE": env_float("VTERM_DRAIN_GRACE", 10.0),  # a drain waits this long for running commands
    "DRAIN_ON_STOP": env_bool("VTERM_DRAIN_ON_STOP", False),  # SIGTERM drains (Kubernetes) or just detaches
    "BREAKER_FAILURES": env_int("VTERM_BREAKER_FAILURES", 3),  # failures within BREAKER_WINDOW open it
    "BREAKER_WINDOW": env_float("VTERM_BREAKER_WINDOW", 60.0),
    "BREAKER_COOLDOWN": env_float("VTERM_BREAKER_COOLDOWN", 30.0),
    # Pool and autoscaler (sessions/pool.py, sessions/autoscaler.py; docs/operations.md).
    "STATS_INTERVAL": env_float("VTERM_STATS_INTERVAL", 5.0),
    # How often each session's process tree is sampled (workers/resource_usage.py).
    "RESOURCE_SAMPLE_INTERVAL": env_float("VTERM_RESOURCE_SAMPLE_INTERVAL", 5.0),
    "POOL_MIN_BACKENDS": env_int("VTERM_POOL_MIN_BACKENDS", env_int("VTERM_BACKENDS", 2)),
    "POOL_MAX_BACKENDS": env_int("VTERM_POOL_MAX_BACKENDS", 8),
    "AUTOSCALE_INTERVAL": env_float("VTERM_AUTOSCALE_INTERVAL", 15.0),
    "AUTOSCALE_HIGH_LOAD": env_float("VTERM_AUTOSCALE_HIGH_LOAD", 0.75),
    "AUTOSCALE_LOW_LOAD": env_float("VTERM_AUTOSCALE_LOW_LOAD", 0.30),
    "AUTOSCALE_TARGET_LOAD": env_float("VTERM_AUTOSCALE_TARGET_LOAD", 0.60),
    "AUTOSCALE_LATENCY_P99": env_float("VTERM_AUTOSCALE_LATENCY_P99", 0.05),
    "AUTOSCALE_ERROR_RATE": env_float("VTERM_AUTOSCALE_ERROR_RATE", 0.05),
    "AUTOSCALE_UP_AFTER": env_int("VTERM_AUTOSCALE_UP_AFTER", 2),
    "AUTOSCALE_DOWN_AFTER": env_int("VTERM_AUTOSCALE_DOWN_AFTER", 4),
    "AUTOSCALE_COOLDOWN": env_float("VTERM_AUTOSCALE_COOLDOWN", 60.0),
    # Retention (sessions/retention.py; docs/operations.md "Retention and sizing"). 0 keeps for ever.
    # Ended sessions (terminated or lost) go this many days after they ended, with their commands
    # and status events; audit events, kept longer, go this many days after they were written.
    "RETENTION_SESSIONS_DAYS": env_float("VTERM_RETENTION_SESSIONS_DAYS", 30.0),
    "RETENTION_AUDIT_DAYS": env_float("VTERM_RETENTION_AUDIT_DAYS", 180.0),
    # A session keeps at most its last this many commands (older finished ones go, live or not).
    "RETENTION_COMMANDS": env_int("VTERM_RETENTION_COMMANDS", 10000),
    # The purge deletes at most BATCH_SIZE rows per statement, each its own short transaction, and
    # rests BATCH_PAUSE seconds between batches: longer than SQLite's busy-wait steps (up to 100 ms),
    # so a command waiting for the write lock gets it. A run stops after RUN_SECONDS; the next one
    # goes on where it stopped.
    "RETENTION_INTERVAL": env_float("VTERM_RETENTION_INTERVAL", 60.0),
    "RETENTION_BATCH_SIZE": env_int("VTERM_RETENTION_BATCH_SIZE", 500),
    "RETENTION_BATCH_PAUSE": env_float("VTERM_RETENTION_BATCH_PAUSE", 0.1),
    "RETENTION_RUN_SECONDS": env_float("VTERM_RETENTION_RUN_SECONDS", 10.0),
    # The space the database may use (a managed PostgreSQL's volume), exported as
    # vterm_database_max_bytes for the alert at 80 %; 0: unknown (SQLite's filesystem is measured).
    "DATABASE_MAX_BYTES": env_int("VTERM_DATABASE_MAX_BYTES", 0),
    # /metrics: a bearer token (from anywhere), and the networks that may scrape without one.
    "METRICS_TOKEN": os.environ.get("VTERM_METRICS_TOKEN", ""),
    "METRICS_ALLOW_NETWORKS": [n.strip() for n in os.environ.get(
        "VTERM_METRICS_ALLOW_NETWORKS",
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7").split(",") if n.strip()],
    # WebSocket terminal (docs/websocket.md): largest client frame (bigger: close 1009), and flow
    # control in characters: pause a viewer above HIGH unacknowledged, resume under LOW, and send
    # a snapshot instead of the backlog when more than SKIP_AFTER was held back meanwhile.
    # 1 MiB: Daphne's own limit, over which it closes with 1009 (the application cannot send 1009).
    "WS_MAX_FRAME": env_int("VTERM_WS_MAX_FRAME", 1024 * 1024),
    "WS_WINDOW_HIGH": env_int("VTERM_WS_WINDOW_HIGH", 512 * 1024),
    "WS_WINDOW_LOW": env_int("VTERM_WS_WINDOW_LOW", 128 * 1024),
    "WS_SKIP_AFTER": env_int("VTERM_WS_SKIP_AFTER", 8 * 1024 * 1024),
    # Sandboxes (workers/sandbox/, docs/security.md): each user's shells run as a uid of their own
    # (allocated once from UID_MIN..UID_MAX), each session in its own namespaces and cgroup.
    # "on" (default): a backend that cannot sandbox refuses to start; "off": shells run as the service.
    "SANDBOX": os.environ.get("VTERM_SANDBOX", "on"),
    "SANDBOX_NETWORK": os.environ.get("VTERM_SANDBOX_NETWORK", "host"),  # host | none
    "SANDBOX_BWRAP": os.environ.get("VTERM_SANDBOX_BWRAP", "/usr/bin/bwrap"),  # bubblewrap
    "SANDBOX_UID_MIN": env_int("VTERM_SANDBOX_UID_MIN", 200000),
    "SANDBOX_UID_MAX": env_int("VTERM_SANDBOX_UID_MAX", 299999),
    # Users' homes (their workspaces, kept across sessions, restarts and moves): <dir>/<uid>.
    "SANDBOX_HOMES": os.environ.get("VTERM_SANDBOX_HOMES", str(DATA_DIR / "homes")),
    # The cgroup under which each backend keeps its sessions' groups; empty: the worker's own.
    "SANDBOX_CGROUP_PARENT": os.environ.get("VTERM_SANDBOX_CGROUP_PARENT", ""),
    # Per-session limits: defaults for every user (staff change them per user in the admin; a client
    # may lower them for one session at creation).
    "SANDBOX_PROCESSES": env_int("VTERM_SANDBOX_PROCESSES", 512),
    "SANDBOX_MEMORY_MB": env_int("VTERM_SANDBOX_MEMORY_MB", 2048),
    "SANDBOX_CPU_WEIGHT": env_int("VTERM_SANDBOX_CPU_WEIGHT", 100),  # 100: an equal share of the CPU
    # Shell starts run on this many threads of a backend, each waiting at most for the new shell's
    # first prompt: a start that hangs holds one thread, not the backend (workers/backend.py).
    "START_THREADS": env_int("VTERM_START_THREADS", 8),
    # Shells per tmux server of a backend (workers/tmux/pool.py): tmux walks every window of a server
    # on each command, so a backend spreads its shells over servers of at most this many; 0: one
    # server for all (docs/bench.md, "Several tmux servers per backend").
    "TMUX_WINDOWS_PER_SERVER": env_int("VTERM_TMUX_WINDOWS_PER_SERVER", 25),
    # Completion webhooks (sessions/webhooks.py, docs/api.md): hosts a notify_url may name although
    # they resolve to a loopback, private or link-local address; one POST's time limit; and the retry
    # schedule: FIRST seconds after the first attempt, each wait FACTOR times the one before, at most
    # MAX_DELAY, until RETRY_FOR seconds after the first attempt.
    "WEBHOOK_ALLOWED_HOSTS": [h.strip().lower().strip("[]") for h in
                              os.environ.get("VTERM_WEBHOOK_ALLOWED_HOSTS", "").split(",") if h.strip()],
    "WEBHOOK_TIMEOUT": env_float("VTERM_WEBHOOK_TIMEOUT", 10.0),
    "WEBHOOK_RETRY_FIRST": env_float("VTERM_WEBHOOK_RETRY_FIRST", 5.0),
    "WEBHOOK_RETRY_FACTOR": env_float("VTERM_WEBHOOK_RETRY_FACTOR", 3.0),
    "WEBHOOK_RETRY_MAX_DELAY": env_float("VTERM_WEBHOOK_RETRY_MAX_DELAY", 3 * 3600.0),
    "WEBHOOK_RETRY_FOR": env_float("VTERM_WEBHOOK_RETRY_FOR", 24 * 3600.0),
    # Retries due sooner than this go to Celery with a countdown; later ones wait for the sweep (beat,
    # every VTERM_WEBHOOK_SWEEP_INTERVAL): far below the broker's visibility timeout (an hour).
    "WEBHOOK_COUNTDOWN_MAX": env_float("VTERM_WEBHOOK_COUNTDOWN_MAX", 60.0),
}
if VTERM["IDEMPOTENCY_TTL"] < 1:
    raise ValueError(f"VTERM_IDEMPOTENCY_TTL must be at least 1 s, not {VTERM['IDEMPOTENCY_TTL']}")
if VTERM["WEB_SYNC_THREADS"] < 1:
    raise ValueError(f"VTERM_WEB_SYNC_THREADS must be at least 1, not {VTERM['WEB_SYNC_THREADS']}")
if VTERM["RETENTION_BATCH_SIZE"] < 1:
    raise ValueError(f"VTERM_RETENTION_BATCH_SIZE must be at least 1, not {VTERM['RETENTION_BATCH_SIZE']}")
if VTERM["HOT_CALLS"] not in ("redis", "celery"):
    raise ValueError(f"VTERM_HOT_CALLS must be 'redis' or 'celery', not {VTERM['HOT_CALLS']!r}")
if VTERM["SANDBOX"] not in ("on", "off"):
    raise ValueError(f"VTERM_SANDBOX must be 'on' or 'off', not {VTERM['SANDBOX']!r}")
if VTERM["SANDBOX_NETWORK"] not in ("host", "none"):
    raise ValueError(f"VTERM_SANDBOX_NETWORK must be 'host' or 'none', not {VTERM['SANDBOX_NETWORK']!r}")
if not 0 < VTERM["SANDBOX_UID_MIN"] <= VTERM["SANDBOX_UID_MAX"]:
    raise ValueError("VTERM_SANDBOX_UID_MIN..VTERM_SANDBOX_UID_MAX must be a range of uids above 0")
