"""Named ARI errors: the only failures `dialguard.ari` lets its callers see.

HTTP status codes stay inside this package. `error_from_response` is the one place that turns an
ARI answer into an exception, so callers write `except ChannelGone:` and never compare numbers.
"""

from __future__ import annotations

from typing import Any


class AriError(Exception):
    """Base of every ARI failure. `message` is Asterisk's text, or ours for transport errors."""

    def __init__(self, message: str, *, channel_id: str | None = None) -> None:
        super().__init__(message if channel_id is None else f"{message} (channel {channel_id})")
        self.message = message
        self.channel_id = channel_id


class AriBadRequest(AriError):
    """Asterisk refused the parameters (400, 422): a bug or a misconfiguration on our side."""


class AriAuthError(AriError):
    """Wrong or missing ARI credentials (401, 403)."""


class AriNotFound(AriError):
    """Something other than a channel does not exist: an application, a dialplan label, ..."""


class ChannelGone(AriNotFound):
    """The channel no longer exists. For a call that hung up first this is not a failure."""


class DialplanTargetNotFound(AriNotFound):
    """`continue` named a label that is not in the dialplan: a configuration error.

    Kept apart from `ChannelGone` because both arrive as 404 and confusing them would hide a
    broken deny/allow label behind "the caller hung up".
    """


class AriConflict(AriError):
    """The request conflicts with the current state (409 outside a channel command)."""


class NotInStasis(AriConflict):
    """The channel exists but is not (or no longer) in our Stasis application."""


class WrongState(AriError):
    """The channel is in a state that does not allow the command (412)."""


class AriUnavailable(AriError):
    """Asterisk did not answer usefully: 5xx, connection refused, reset or timeout."""


class MalformedEvent(AriError):
    """An event that does not have the shape the ARI definitions promise."""


_LABEL_NOT_FOUND = "Requested label can not be found"


def message_of(body: Any, default: str) -> str:
    """Asterisk puts its text under "message", except a few 500s that use "error"."""
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, str):
                return value
    return default


def error_from_response(status: int, body: Any, *, channel_id: str | None = None) -> AriError:
    """Translate a non-2xx ARI answer.

    `channel_id` is given by commands that act on one channel; there 404 means the channel is
    gone and 409 means it is not in Stasis. Elsewhere the generic not-found/conflict apply.
    """
    message = message_of(body, default=f"HTTP {status}")
    if status in (400, 422):
        return AriBadRequest(message, channel_id=channel_id)
    if status in (401, 403):
        return AriAuthError(message, channel_id=channel_id)
    if status == 404:
        if message == _LABEL_NOT_FOUND:
            return DialplanTargetNotFound(message, channel_id=channel_id)
        if channel_id is not None:
            return ChannelGone(message, channel_id=channel_id)
        return AriNotFound(message)
    if status == 409:
        if channel_id is not None:
            return NotInStasis(message, channel_id=channel_id)
        return AriConflict(message)
    if status == 412:
        return WrongState(message, channel_id=channel_id)
    if status >= 500:
        return AriUnavailable(message, channel_id=channel_id)
    return AriError(message, channel_id=channel_id)
