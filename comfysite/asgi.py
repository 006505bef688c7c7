"""ASGI entry point: HTTP through Django, websockets through the Channels router."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from generator.web_threads import SharedThreadsASGIHandler  # noqa: E402

django_asgi_app = SharedThreadsASGIHandler(settings.WEB_THREADS)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from generator.routing import SameOriginOnly, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The origin is checked first, by scheme, host and port (generator/routing.py).
        "websocket": SameOriginOnly(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

from comfysite.runtime import prepare_long_running_process  # noqa: E402

prepare_long_running_process()
