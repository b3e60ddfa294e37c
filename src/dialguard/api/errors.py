"""The API's errors and the one place that turns errors into HTTP answers.

Every error answer is ``{"error": {"code": ..., "message": ...}}`` (plus ``line``/``column`` for
malformed bodies, ``problems`` for invalid profiles). A deny is a result (200), never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from dialguard.policy.feedback import ComplaintError
from dialguard.policy.profile import ProfileError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class BadRequest(ApiError):
    pass


class MalformedBody(ApiError):
    """A body that is not JSON, CSV or UTF-8; ``line`` and ``column`` are 1-based."""

    code = "malformed_body"

    def __init__(self, message: str, *, line: int, column: int, **extra: Any) -> None:
        super().__init__(f"line {line}, column {column}: {message}", line=line, column=column)
        self.extra.update(extra)
        self.line = line
        self.column = column


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class TooLarge(ApiError):
    status = 413
    code = "body_too_large"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class UnsupportedMedia(ApiError):
    status = 415
    code = "unsupported_media_type"


class ResponseAbandoned(Exception):
    """A streamed answer broke off after it started: the connection is closed unfinished."""


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status, headers=headers)


def error_middleware(
    domain: Mapping[type[BaseException], tuple[int, str]],
) -> Middleware:
    """Maps API errors, aiohttp's HTTP errors and the domain's named errors (``domain``)."""
    named = tuple(domain)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            _refuse_nul(request)
            return await handler(request)
        except ResponseAbandoned:
            raise
        except ApiError as exc:
            return error_response(exc.status, exc.code, str(exc), **exc.extra)
        except ProfileError as exc:
            return error_response(400, "invalid_profile", str(exc), problems=exc.problems)
        except ComplaintError as exc:
            return error_response(400, "invalid_complaint", str(exc), field=exc.field)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "body_too_large", "the body is larger than api.max_body")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            return error_response(exc.status, code, exc.text or exc.reason)
        except named as exc:
            status, code = _lookup(domain, exc)
            if status >= 500:
                log.warning("%s %s failed: %s", request.method, request.path, exc)
            return error_response(status, code, str(exc) or code)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error (logged)")

    return errors


def _refuse_nul(request: web.Request) -> None:
    """PostgreSQL text cannot hold NUL: refuse it where it arrives rather than fail later."""
    if "\x00" in request.path or any("\x00" in v for v in request.query.values()):
        raise BadRequest("the path or query holds a NUL character")


def _lookup(
    domain: Mapping[type[BaseException], tuple[int, str]], exc: BaseException
) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in domain:
            return domain[cls]
    return 500, "internal"
