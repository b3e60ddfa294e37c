"""The dialers' credentials: checked like Asterisk checks its own, never forwarded.

Asterisk accepts HTTP Basic auth or, when no Authorization header is sent, an ``api_key``
query parameter holding ``user:password`` (res_ari.c, authenticate_user). The proxy does the
same with the dialers' credentials, then talks to Asterisk with dialguard's own: the
dialers' never reach Asterisk, its logs or ours.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from urllib.parse import unquote_plus

from aiohttp import web

AUTH_REQUIRED_BODY = json.dumps({"message": "Authentication required"}, separators=(",", ":"))
_CHALLENGE = 'Basic realm="Asterisk REST Interface"'


class DialerCredentials:
    def __init__(self, username: str, password: str) -> None:
        self._expected = f"{username}:{password}".encode()
        self._expected_header = b"Basic " + base64.b64encode(self._expected)

    def admit(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        if header is not None:
            if hmac.compare_digest(header.encode(), self._expected_header):
                return True  # the usual spelling, without decoding
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                supplied = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(supplied, self._expected)
        # Asterisk takes the first api_key, whatever the case of its name.
        key = next((v for k, v in request.query.items() if k.lower() == "api_key"), None)
        return key is not None and hmac.compare_digest(key.encode(), self._expected)


def unauthorized() -> web.Response:
    """Asterisk's answer to missing or wrong credentials."""
    return web.Response(
        status=401,
        body=AUTH_REQUIRED_BODY.encode(),
        content_type="application/json",
        headers={"WWW-Authenticate": _CHALLENGE},
    )


def without_api_key(raw_query: str) -> str:
    """The raw query string minus any ``api_key`` pair; every other byte kept as sent."""
    if "api_key" not in raw_query.lower() and "%" not in raw_query:
        return raw_query  # the common case, without splitting
    kept = [
        pair
        for pair in raw_query.split("&")
        if unquote_plus(pair.partition("=")[0]).lower() != "api_key"
    ]
    return "&".join(kept)
