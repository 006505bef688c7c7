from typing import Any

from django.conf import settings
from django.http import HttpRequest

from .banner import banner_summary
from .workflows import registry


def backend_status(request: HttpRequest) -> dict[str, Any]:
    """The backend banner, on every page: signed in or not (visitors get no backend details)."""
    context: dict[str, Any] = {
        "backend": banner_summary(signed_in=request.user.is_authenticated),
        "banner_poll_seconds": settings.BANNER_POLL_SECONDS,
    }
    if request.user.is_staff:
        context["workflow_problems"] = registry().problems
    return context
