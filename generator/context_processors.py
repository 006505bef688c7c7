from typing import Any

from django.http import HttpRequest

from .backends import backend_summary
from .workflows import registry


def backend_status(request: HttpRequest) -> dict[str, Any]:
    if not request.user.is_authenticated:
        return {}
    context: dict[str, Any] = {"backend": backend_summary()}
    if request.user.is_staff:
        context["workflow_problems"] = registry().problems
    return context
