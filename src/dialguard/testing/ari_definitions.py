"""The ARI REST definitions (Swagger 1.1 of Asterisk 22) as a request validator.

The fake checks every request against them so that a client bug (a parameter that does not
exist, a missing required one, a value outside the allowed set) shows up in tests as a recorded
protocol violation instead of passing silently. Real Asterisk ignores unknown parameters; the
fake is stricter on purpose.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

_DOCS_PACKAGE = "dialguard.testing"
_DOCS_DIR = "ari_api_docs"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # "query", "path" or "body"
    data_type: str
    required: bool
    allow_multiple: bool
    allowed_values: tuple[str, ...] | None
    minimum: int | None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    template: str  # "/channels/{channelId}/continue"
    nickname: str
    params: tuple[Param, ...]
    pattern: re.Pattern[str] = field(compare=False)
    literal_segments: int = 0

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a request breaks the definitions. `param` is None for path/method problems."""

    message: str
    param: str | None = None


class RouteNotFound(Exception):
    """No resource in the definitions has this path."""


class MethodNotAllowed(Exception):
    """The path exists but not with this method."""


class AriDefinitions:
    """Every operation of the bundled api-docs, matched by method and path (below /ari)."""

    def __init__(self, operations: list[Operation]) -> None:
        # Literal segments win over {params}: /channels/create is not a channel id.
        self._operations = sorted(operations, key=lambda op: -op.literal_segments)
        # Only templates with the path's first segment and number of segments can match it
        # ({params} never span a "/"): the fake looks up a few instead of every operation.
        # A template ending in a literal ("/continue") is skipped unless the path ends so too.
        self._by_shape: dict[tuple[str, int], list[tuple[str | None, Operation]]] = {}
        for op in self._operations:
            last = op.template.rsplit("/", 1)[-1]
            literal_last = None if last.startswith("{") else last
            self._by_shape.setdefault(_shape(op.template), []).append((literal_last, op))
        self._any_shape = any(key[0].startswith("{") for key in self._by_shape)

    @classmethod
    def load(cls) -> AriDefinitions:
        operations: list[Operation] = []
        docs = resources.files(_DOCS_PACKAGE).joinpath(_DOCS_DIR)
        for entry in sorted(docs.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".json"):
                continue
            document = json.loads(entry.read_text(encoding="utf-8"))
            for api in document["apis"]:
                for op in api["operations"]:
                    operations.append(_operation(api["path"], op))
        return cls(operations)

    @staticmethod
    def document(name: str) -> bytes | None:
        """The bytes of one bundled api-docs file ("channels.json"), None if there is none."""
        if "/" in name or not name.endswith(".json"):
            return None
        entry = resources.files(_DOCS_PACKAGE).joinpath(_DOCS_DIR).joinpath(name)
        return entry.read_bytes() if entry.is_file() else None

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """Find the operation for a path below /ari; RouteNotFound / MethodNotAllowed."""
        path_found = False
        candidates: list[tuple[str | None, Operation]]
        if self._any_shape:
            candidates = [(None, op) for op in self._operations]
        else:
            candidates = self._by_shape.get(_shape(path), [])
        last = path.rsplit("/", 1)[-1]
        for literal_last, op in candidates:
            if literal_last is not None and literal_last != last:
                continue
            m = op.pattern.fullmatch(path)
            if m is None:
                continue
            path_found = True
            if op.method == method:
                return op, m.groupdict()
        if path_found:
            raise MethodNotAllowed(f"{method} is not defined for {path}")
        raise RouteNotFound(f"no resource {path}")

    @staticmethod
    def validate(op: Operation, query: dict[str, str], body: Any) -> list[Violation]:
        """Every way the query and JSON body break the operation's definition."""
        violations: list[Violation] = []
        supplied: dict[str, Any] = dict(query)
        if body is not None:
            if not isinstance(body, dict):
                violations.append(Violation("JSON body is not an object"))
            elif (whole := _whole_body(op, body)) is not None:
                # Every key belongs to the one body parameter (eventFilter's "filter": the
                # body is {"allowed": [...]}), which Asterisk reads from the body as a whole.
                supplied.setdefault(whole, body)
            else:
                # Asterisk reads any parameter from a JSON body as well as from the query.
                for key, value in body.items():
                    supplied.setdefault(key, value)
        for name in supplied:
            p = op.param(name)
            if p is None or p.kind == "path":
                violations.append(Violation(f"unknown parameter {name!r} for {op.nickname}", name))
        for p in op.params:
            if p.kind == "path":
                continue
            if p.name not in supplied:
                if p.required:
                    violations.append(Violation(f"missing required parameter {p.name!r}", p.name))
                continue
            problem = _check_value(p, supplied[p.name])
            if problem is not None:
                violations.append(Violation(problem, p.name))
        return violations


def _whole_body(op: Operation, body: dict[str, Any]) -> str | None:
    """The body parameter a JSON body stands for as a whole: when the operation has one and
    none of the body's keys names a parameter."""
    named = next((p.name for p in op.params if p.kind == "body"), None)
    if named is None or any(op.param(key) is not None for key in body):
        return None
    return named


def _shape(path: str) -> tuple[str, int]:
    """The first segment and the number of segments: "/channels/1.2/continue" -> ("channels", 4)."""
    parts = path.split("/")
    return (parts[1] if len(parts) > 1 else "", len(parts))


def _operation(template: str, op: dict[str, Any]) -> Operation:
    params = tuple(_param(p) for p in op.get("parameters", []))
    regex = "".join(
        f"(?P<{seg[1:-1]}>[^/]+)" if seg.startswith("{") else re.escape(seg)
        for seg in re.split(r"(\{[^}]+\})", template)
        if seg
    )
    literal = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
    return Operation(
        method=op["httpMethod"],
        template=template,
        nickname=op["nickname"],
        params=params,
        pattern=re.compile(regex),
        literal_segments=literal,
    )


def _param(raw: dict[str, Any]) -> Param:
    allowable = raw.get("allowableValues")
    allowed: tuple[str, ...] | None = None
    minimum: int | None = None
    if isinstance(allowable, dict):
        if allowable.get("valueType") == "LIST":
            allowed = tuple(str(v) for v in allowable["values"])
        elif allowable.get("valueType") == "RANGE" and "min" in allowable:
            minimum = int(allowable["min"])
    return Param(
        name=raw["name"],
        kind=raw["paramType"],
        data_type=raw["dataType"],
        required=bool(raw.get("required", False)),
        allow_multiple=bool(raw.get("allowMultiple", False)),
        allowed_values=allowed,
        minimum=minimum,
    )


def _check_value(p: Param, value: Any) -> str | None:
    if p.data_type == "containers" or p.data_type == "object":
        if not isinstance(value, dict):
            return f"{p.name!r} must be a JSON object"
        if p.data_type == "containers" and not all(isinstance(v, str) for v in value.values()):
            return f"{p.name!r} values must be strings"
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    items = text.split(",") if p.allow_multiple else [text]
    for item in items:
        if p.data_type in ("int", "long"):
            if not re.fullmatch(r"-?\d+", item):
                return f"{p.name!r} must be an integer, got {item!r}"
            if p.minimum is not None and int(item) < p.minimum:
                return f"{p.name!r} must be >= {p.minimum}"
        elif p.data_type == "boolean" and item not in ("true", "false"):
            return f"{p.name!r} must be true or false, got {item!r}"
        if p.allowed_values is not None and item not in p.allowed_values:
            return f"{p.name!r} value {item!r} is not one of {', '.join(p.allowed_values)}"
    return None
