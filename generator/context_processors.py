from typing import Any

from django.http import HttpRequest

from .backends import backend_summary


def backend_status(request: HttpRequest) -> dict[str, Any]:
    if not request.user.is_authenticated:
        return {}
    return {"backend": backend_summary()}
