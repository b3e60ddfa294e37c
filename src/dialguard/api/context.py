"""What every handler shares: the app's dependencies, JSON answers, number parameters."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from aiohttp import web

from dialguard.api.errors import BadRequest
from dialguard.api.ports import ApiDeps
from dialguard.numbers import InvalidNumber, is_e164_prefix, normalise

DEPS: web.AppKey[ApiDeps] = web.AppKey("deps", ApiDeps)


def deps(request: web.Request) -> ApiDeps:
    return request.app[DEPS]


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


dumps = partial(json.dumps, default=_default)


def answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def number(text: str, request: web.Request, name: str = "number") -> str:
    """The E.164 form of a number given in a path, query or body; 400 when it is not one."""
    try:
        return normalise(text, deps(request).default_region)
    except InvalidNumber:
        raise BadRequest(f"{name} {text!r} is not a valid phone number") from None


def prefix(text: str) -> str:
    value = text.strip()
    if not is_e164_prefix(value):
        raise BadRequest(f"prefix {text!r} must be E.164 like +1718264")
    return value
