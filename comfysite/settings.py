"""ComfySite settings, read from environment variables with embedded defaults.

The defaults run everything on one machine (SQLite, in-memory channel layer, the built-in
ComfyUI emulator when no ComfyUI answers), for localhost only, without Django's debug pages.
Production sets ALLOWED_HOSTS, SECRET_KEY, DATABASE_URL (PostgreSQL), REDIS_URL and
COMFYUI_URLS; developers set DEBUG=true. See the README.
"""

import os
import secrets
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("COMFYSITE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def local_secret_key() -> str:
    """A per-checkout key, generated once and kept out of git (see .gitignore)."""
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


# Off unless asked for: Django's debug page shows anyone who makes a 500 the code, the settings
# and the request. Developers opt in with DEBUG=true.
DEBUG = env_bool("DEBUG", False)

# With no ALLOWED_HOSTS the site answers only to this machine's own names, as `make run` serves
# it on a fresh machine: plain HTTP, a secret key generated into var/, static files served from
# where they are. A host name means a deployment: HTTPS behind a proxy, a SECRET_KEY shared by
# every process, and `collectstatic` (see the README).
LOCALHOST_ONLY = not env_list("ALLOWED_HOSTS")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS") or ["127.0.0.1", "localhost", "[::1]"]

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not (DEBUG or LOCALHOST_ONLY):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when the site serves ALLOWED_HOSTS (every process needs the same)."
        )
    SECRET_KEY = local_secret_key()

CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "ninja",  # the API's interactive docs, served from our static files
    "generator",
]

MIDDLEWARE = [
    "generator.middleware.refuse_long_urls",  # first: before anything builds a redirect from the URL
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "comfysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "generator.context_processors.backend_status",
            ],
        },
    },
]

ASGI_APPLICATION = "comfysite.asgi.application"
# Sessions are read on every request: from the cache (Redis in production), the database behind it.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# Threads per web process for Django's synchronous request handling (see generator.web_threads).
# One by default: each more thread running Python takes the GIL from the event loop that relays
# progress (with two, 50 posts at once put the relay's p99 at ~33 ms instead of ~15 ms). Serve
# more requests at once with more processes (`uvicorn --workers N`).
WEB_THREADS = int(os.environ.get("WEB_THREADS", "1"))
WSGI_APPLICATION = "comfysite.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        # Django advises against persistent connections under ASGI because each request may run
        # on a new thread, each opening one more connection. Here requests share WEB_THREADS
        # threads (generator.web_threads) and each bridge has its own: a process holds a few
        # connections, and a request does not pay for opening one (≈4 ms on PostgreSQL).
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the bridge write while pages read; the timeout rides out short write locks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file too: an in-memory database shared between threads locks whole tables
    # and fails at once where a file waits its turn, as the site's bridges and views do.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"comfysite-test-{os.getpid()}.sqlite3")
    }


def redis_channel_layers(url: str) -> dict:
    # A layer's receive blocks in Redis for up to 5 s (BZPOPMIN); redis-py 8 gives up reading
    # a socket after 5 s by default, which tore idle websockets and bridges down every 5 s.
    host = {"address": url, "socket_timeout": 15}
    # All the websockets of a web process share one Redis list, 100 messages by default: with a
    # few hundred tabs, a burst of updates overflowed it and fragments were dropped.
    config = {"hosts": [host], "capacity": 2000}
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}}


REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = redis_channel_layers(REDIS_URL)
    # Redis's, but a Redis restart is a cache miss, not a 500 (generator/cache.py).
    CACHES = {"default": {"BACKEND": "generator.cache.ResilientRedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Failed log-ins allowed per username, and (far more: many people may share one address behind
# a proxy or NAT) per client address, within the window.
LOGIN_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
LOGIN_FAILURE_LIMIT_PER_ADDRESS = int(os.environ.get("LOGIN_FAILURE_LIMIT_PER_ADDRESS", "50"))
LOGIN_FAILURE_WINDOW_SECONDS = int(os.environ.get("LOGIN_FAILURE_WINDOW_SECONDS", "900"))

EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
    EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "ComfySite <noreply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
# On localhost (and in debug) static files are served from the app folders, without
# `collectstatic`: `make run` is one command. A deployment serves the collected, hashed copies.
STATIC_FROM_FINDERS = DEBUG or LOCALHOST_ONLY
SERVESTATIC_USE_FINDERS = STATIC_FROM_FINDERS
if STATIC_FROM_FINDERS:
    # An empty root keeps ServeStatic quiet.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Media holds users' private images: it is never served under a public URL, only through
# views that check ownership.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media-not-public/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if STATIC_FROM_FINDERS
            else "servestatic.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# The ComfyUI servers the bridges drive: COMFYUI_URLS, comma-separated, each URL optionally
# with "?label=GPU%20A&weight=2"; or COMFYUI_URL for one. Neither set: the built-in emulator
# (demo backend) is used when nothing answers at the default address.
COMFYUI_URL = os.environ.get("COMFYUI_URL", "")
COMFYUI_URLS = env_list("COMFYUI_URLS") or ([COMFYUI_URL] if COMFYUI_URL else [])
COMFYUI_DEFAULT_URL = "http://127.0.0.1:8188"
# A bridge process holds each backend it drives by a lease it renews; when the process dies,
# another takes the backend over once the lease runs out.
BRIDGE_LEASE_SECONDS = float(os.environ.get("BRIDGE_LEASE_SECONDS", "10"))
# A backend unreachable this long has its unfinished jobs put back in the queue for the others.
BACKEND_DEAD_SECONDS = float(os.environ.get("BACKEND_DEAD_SECONDS", "60"))
# How often every open page asks whether the backend banner changed (a cached fragment; tabs
# with the jobs websocket also hear a change at once).
BANNER_POLL_SECONDS = int(os.environ.get("BANNER_POLL_SECONDS", "15"))

WORKFLOWS_DIR = Path(os.environ.get("WORKFLOWS_DIR", BASE_DIR / "workflows"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if not (DEBUG or LOCALHOST_ONLY):  # no certificate for localhost: `make run` is plain HTTP
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}

# Moderation and downloads.
SHOW_IMAGES_BEFORE_REVIEW = env_bool("SHOW_IMAGES_BEFORE_REVIEW", True)
# A history page (and GET /api/jobs) filtered by prompt text or workflow reads at most this many
# of the user's rows; the next page goes on from there (see generator.history.keyset_page).
HISTORY_SCAN_ROWS = int(os.environ.get("HISTORY_SCAN_ROWS", "5000"))
DOWNLOAD_KEEPS_WORKFLOW = env_bool("DOWNLOAD_KEEPS_WORKFLOW", False)

# Images users upload for image-to-image and upscaling.
MAX_UPLOAD_BYTES = int(os.environ.get("MAX_UPLOAD_BYTES", str(10 * 1024 * 1024)))
MAX_UPLOAD_PIXELS = int(os.environ.get("MAX_UPLOAD_PIXELS", str(4096 * 4096)))
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Request bodies other than uploaded files: room for an image sent base64 in the API's JSON.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES * 4 // 3 + 1024 * 1024

# Cards on the generate page (and refreshed by its websocket): a user's newest jobs; their other
# queued jobs are counted under them ("and 4,980 more queued"), not rendered.
JOB_CARDS = int(os.environ.get("JOB_CARDS", "20"))

# Per-user limits for users in no group with a quota (admin: Generator › Quotas). Running counts
# jobs handed to ComfyUI, so 2 lets one wait behind the running one and the GPU never idles.
DEFAULT_QUOTA = {
    "max_queued": int(os.environ.get("QUOTA_MAX_QUEUED", "20")),
    "max_running": int(os.environ.get("QUOTA_MAX_RUNNING", "2")),
    "max_images_per_day": int(os.environ.get("QUOTA_MAX_IMAGES_PER_DAY", "500")),
}

# Let the web server send private media once a view has checked permission: "" (Django sends
# the bytes), "x-accel-redirect" (nginx: an `internal` location at MEDIA_ACCEL_PREFIX aliased to
# MEDIA_ROOT) or "x-sendfile" (Apache mod_xsendfile, lighttpd).
MEDIA_SENDFILE = os.environ.get("MEDIA_SENDFILE", "").strip().lower()
MEDIA_ACCEL_PREFIX = os.environ.get("MEDIA_ACCEL_PREFIX", "/protected-media/")

# The API (generator/api/). Signed image links last API_LINK_SECONDS; API_RATE_LIMIT is per
# user over all their keys ("120/m": 120 requests a minute); an Idempotency-Key is remembered
# IDEMPOTENCY_SECONDS.
API_LINK_SECONDS = int(os.environ.get("API_LINK_SECONDS", "3600"))
API_RATE_LIMIT = os.environ.get("API_RATE_LIMIT", "120/m")
IDEMPOTENCY_SECONDS = 24 * 3600

# Webhooks: retried with exponential backoff from WEBHOOK_RETRY_BASE_SECONDS for
# WEBHOOK_RETRY_HOURS; URLs resolving to private or local addresses only with
# WEBHOOK_ALLOW_PRIVATE. SITE_URL (the public origin, https://comfy.example.com) makes the links
# in webhook events absolute; unset, they are relative to the site.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_RETRY_HOURS = float(os.environ.get("WEBHOOK_RETRY_HOURS", "24"))
WEBHOOK_RETRY_BASE_SECONDS = float(os.environ.get("WEBHOOK_RETRY_BASE_SECONDS", "10"))
SITE_URL = os.environ.get("SITE_URL", "").rstrip("/")
