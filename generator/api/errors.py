"""One error shape for the whole API, OpenAI's, so that its client (and ours) read every error
the same way: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> HttpResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        response = JsonResponse({"error": {**body, **self.extra}}, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def not_found(what: str = "No such job.") -> ApiError:
    return ApiError(404, what, code="not_found")


@login_not_required
def no_such_route(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other address under /api/ or /v1/: the API's own 404, not the site's HTML page."""
    return not_found(f"There is no {request.path}; see /api/docs.").response()


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form")]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request.")
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(api: NinjaAPI) -> None:
    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return exc.response()

    @api.exception_handler(ValidationError)
    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        message, param = _validation_message(list(exc.errors))
        return ApiError(400, message, param=param, code="invalid").response()

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        error = ApiError(
            401,
            "Missing, malformed, unknown or revoked API key. Send `Authorization: Bearer <key>`; "
            "make keys at /accounts/api-keys/.",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        return error.response()

    @api.exception_handler(Throttled)
    def throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
        wait = max(1, int(exc.wait or 1))
        message = f"Too many requests; try again in {wait} s."
        return ApiError(
            429, message, type="rate_limit_error", code="rate_limited", headers={"Retry-After": str(wait)}
        ).response()

    @api.exception_handler(SuspiciousOperation)
    def suspicious(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
        # A body too large (RequestDataTooBig), too many fields or files: Django refuses to read it.
        return ApiError(400, f"The request was refused: {exc}", code="request_refused").response()

    @api.exception_handler(MultiPartParserError)
    def bad_multipart(request: HttpRequest, exc: MultiPartParserError) -> HttpResponse:
        return ApiError(400, f"The body is not valid multipart/form-data: {exc}", code="invalid").response()

    @api.exception_handler(Http404)
    def missing(request: HttpRequest, exc: Http404) -> HttpResponse:
        return ApiError(404, "Not found.", code="not_found").response()

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        return ApiError(exc.status_code, str(exc)).response()

    @api.exception_handler(Exception)
    def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.exception("API %s %s failed", request.method, request.path)
        return ApiError(500, "The server failed on this request.", type="server_error").response()
