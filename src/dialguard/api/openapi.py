"""The OpenAPI 3.1 document of the admin API, served at ``GET /v1/openapi.json``.

A test checks that every route of the app is documented here and every path here is a route.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dialguard import __version__
from dialguard.policy.codes import CallerIdState, Rule

J = dict[str, Any]
NULLABLE_STRING: J = {"type": ["string", "null"]}
TIME: J = {"type": "string", "format": "date-time"}
NULLABLE_TIME: J = {"type": ["string", "null"], "format": "date-time"}
RULE: J = {"type": ["string", "null"], "enum": [*(r.value for r in Rule), None]}
RULE_FILTERS = [*(r.value for r in Rule), "none"]


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: J) -> J:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: J | None = None, status: str = "200") -> J:
    answer: J = {"description": description}
    if schema is not None:
        answer.update(_json(schema))
    return {status: answer}


ERRORS: J = {
    "400": {"description": "invalid request or malformed body", **_json(_ref("Error"))},
    "401": {"description": "missing or wrong bearer token", **_json(_ref("Error"))},
    "503": {"description": "the database is unavailable", **_json(_ref("Error"))},
}


def _op(summary: str, responses: J, *, body: J | None = None, params: list[J] | None = None) -> J:
    op: J = {"summary": summary, "responses": {**responses, **ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": True, **body}
    if params:
        op["parameters"] = params
    return op


def _query(name: str, schema: J | None = None, description: str = "") -> J:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema or {"type": "string"},
        "description": description,
    }


def _path(name: str) -> J:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_LOG_FILTERS = [
    _query("destination"),
    _query("caller_id"),
    _query("campaign"),
    _query("since", TIME, "inclusive"),
    _query("until", TIME, "exclusive"),
    _query("cursor", {"type": "string", "pattern": "^[0-9]+$"}, "next_cursor of the last page"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
]
_OPTIONAL_BODY: J = {
    "required": False,
    **_json({"type": "object", "properties": {"reason": {"type": "string"}}}),
}
_CSV_BODY: J = {"content": {"text/csv": {"schema": {"type": "string"}}}}
_NOT_FOUND: J = {"404": {"description": "not found", **_json(_ref("Error"))}}


def _entry_ops(kind: str) -> J:
    params = [_path(kind), _query("campaign", description="'' or absent: the global list")]
    entry_body = {
        "required": False,
        **_json(
            {
                "type": "object",
                "properties": {
                    "campaign": {"type": "string"},
                    "source": {"type": "string"},
                    "reason": {"type": "string"},
                    # In the future; an entry already there keeps the later expiry unless
                    # replace is true.
                    "expires_at": TIME,
                    "replace": {"type": "boolean", "default": False},
                },
            }
        ),
    }
    return {
        "parameters": params,
        "get": _op(f"show a blacklisted {kind}", {**_ok("the entry", _ref("Row")), **_NOT_FOUND}),
        "put": {
            **_op(f"blacklist a {kind}", _ok("the entry", _ref("Row"))),
            "requestBody": entry_body,
        },
        "delete": _op(
            f"remove a {kind} from the blacklist",
            {"204": {"description": "removed"}, **_NOT_FOUND},
        ),
    }


PATHS: J = {
    "/healthz": {"get": {"summary": "the process lives", "responses": _ok("alive", _ref("Row"))}},
    "/readyz": {
        "get": {
            "summary": "ready to gate calls (ARI connected, reconciled)",
            "responses": {
                **_ok("ready", _ref("Row")),
                "503": {"description": "not ready", **_json(_ref("Row"))},
            },
        }
    },
    "/v1/openapi.json": {
        "get": {"summary": "this document", "responses": _ok("OpenAPI 3.1", {"type": "object"})}
    },
    "/v1/check": {
        "post": _op(
            "decide without recording (dry run); a deny is a 200",
            _ok("the decision", _ref("Decision")),
            body=_json(_ref("DecisionRequest")),
        )
    },
    "/v1/decide": {
        "post": _op(
            "decide and record (for dialers that do not use ARI); a deny is a 200",
            _ok("the decision", _ref("Decision")),
            body=_json(_ref("DecisionRequest")),
        )
    },
    "/v1/decisions": {
        "get": _op(
            "the audit trail, newest first, paged",
            _ok("a page", _ref("DecisionPage")),
            params=[*_LOG_FILTERS, _query("rule", {"type": "string", "enum": RULE_FILTERS})],
        )
    },
    "/v1/scrub": {
        "post": _op(
            "which numbers are callable now, and why not; streamed as CSV",
            {
                "200": {
                    "description": "one row per input number, in input order",
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "application/json": {"schema": _ref("ScrubResults")},
                    },
                }
            },
            body={
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": _ref("ScrubRequest")},
                }
            },
            params=[_query("caller_id"), _query("campaign")],
        )
    },
    "/v1/blacklist/numbers/{number}": _entry_ops("number"),
    "/v1/blacklist/prefixes/{prefix}": _entry_ops("prefix"),
    "/v1/blacklist/import": {
        "post": _op(
            "bulk CSV import into COPY; good rows are kept, bad lines reported",
            _ok("what was imported", _ref("ImportSummary")),
            body=_CSV_BODY,
            params=[_query("source", description="source of rows that name none")],
        )
    },
    "/v1/complaints": {
        "post": _op(
            "record a complaint and apply its effects",
            {
                **_ok("recorded", _ref("ComplaintRecorded"), "201"),
                **_ok("a duplicate: counted once, changed nothing", _ref("ComplaintRecorded")),
            },
            body=_json(_ref("ComplaintRequest")),
        ),
        "get": _op(
            "complaints, newest first, paged",
            _ok("a page", _ref("ComplaintPage")),
            params=[*_LOG_FILTERS, _query("source")],
        ),
    },
    "/v1/complaints/import": {
        "post": _op(
            "bulk CSV import of complaints; good rows are kept, bad lines reported",
            _ok("what was imported", _ref("ImportSummary")),
            body=_CSV_BODY,
            params=[_query("source", description="source of rows that name none")],
        )
    },
    "/v1/callerids": {
        "get": _op(
            "registered caller IDs",
            _ok("the list", {"type": "object"}),
            params=[_query("state", {"type": "string", "enum": [s.value for s in CallerIdState]})],
        ),
        "post": _op(
            "register a caller ID",
            _ok("registered", _ref("Row"), "201"),
            body=_json(
                {
                    "type": "object",
                    "required": ["number"],
                    "properties": {"number": {"type": "string"}, "campaign": NULLABLE_STRING},
                }
            ),
        ),
    },
    "/v1/callerids/{number}": {
        "parameters": [_path("number")],
        "get": _op(
            "a caller ID with its health figures",
            {**_ok("the caller ID", _ref("CallerId")), **_NOT_FOUND},
        ),
    },
    **{
        f"/v1/callerids/{{number}}/{action}": {
            "parameters": [_path("number")],
            "post": {
                **_op(
                    what,
                    {
                        **_ok("the caller ID", _ref("Row")),
                        **_NOT_FOUND,
                        "409": {"description": "retired: final", **_json(_ref("Error"))},
                    },
                ),
                "requestBody": _OPTIONAL_BODY,
            },
        }
        for action, what in (
            ("rest", "rest a caller ID"),
            ("release", "release a rested caller ID"),
            ("retire", "retire a caller ID for good"),
        )
    },
    "/v1/campaigns": {"get": _op("campaigns", _ok("the list", {"type": "object"}))},
    "/v1/campaigns/{name}": {
        "parameters": [_path("name")],
        "get": _op("a campaign (the defaults if never set)", _ok("the campaign", _ref("Row"))),
        "put": _op(
            "set a campaign's profile and overrides; every problem is reported",
            _ok("the campaign", _ref("Row")),
            body=_json(
                {
                    "type": "object",
                    "properties": {
                        "profile": {"type": "string"},
                        "overrides": {"type": "object"},
                    },
                }
            ),
        ),
    },
    **{
        f"/v1/campaigns/{{name}}/{action}": {
            "parameters": [_path("name")],
            "post": {
                **_op(f"{action} a campaign", _ok("the campaign", _ref("Row"))),
                "requestBody": _OPTIONAL_BODY,
            },
        }
        for action in ("pause", "resume")
    },
}

SCHEMAS: J = {
    "Row": {"type": "object"},
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "line": {"type": "integer"},
                    "column": {"type": "integer"},
                },
            }
        },
    },
    "DecisionRequest": {
        "type": "object",
        "required": ["caller_id", "destination"],
        "properties": {
            "caller_id": {"type": "string"},
            "destination": {"type": "string"},
            "campaign": NULLABLE_STRING,
            "at": NULLABLE_TIME,
        },
    },
    "Decision": {
        "type": "object",
        "required": ["verdict", "rule", "evidence", "decision_id"],
        "properties": {
            "verdict": {"type": "string", "enum": ["allow", "deny"]},
            "rule": RULE,
            "evidence": {"type": "string"},
            "decision_id": {"type": ["integer", "null"]},
            "caller_id": {"type": "string"},
            "destination": {"type": "string"},
            "campaign": {"type": "string"},
            "at": TIME,
            "callable_at": NULLABLE_TIME,
            "facts": {"type": "object"},
        },
    },
    "DecisionPage": {
        "type": "object",
        "properties": {
            "decisions": {"type": "array", "items": {"type": "object"}},
            "next_cursor": NULLABLE_STRING,
        },
    },
    "ScrubRequest": {
        "type": "object",
        "required": ["numbers"],
        "properties": {
            "numbers": {"type": "array", "items": {"type": "string"}},
            "caller_id": NULLABLE_STRING,
            "campaign": NULLABLE_STRING,
        },
    },
    "ScrubResults": {
        "type": "object",
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "destination": {"type": "string"},
                        "callable": {"type": "boolean"},
                        "rule": RULE,
                        "callable_at": NULLABLE_TIME,
                    },
                },
            }
        },
    },
    "ComplaintRequest": {
        "type": "object",
        "required": ["destination", "source"],
        "properties": {
            "destination": {"type": "string"},
            "source": {"type": "string"},
            "caller_id": NULLABLE_STRING,
            "campaign": NULLABLE_STRING,
            "at": NULLABLE_TIME,
            "text": NULLABLE_STRING,
        },
    },
    "ComplaintRecorded": {
        "type": "object",
        "required": ["id", "effects"],
        "properties": {
            "id": {"type": "integer"},
            "duplicate": {"type": "boolean"},
            "effects": {
                "type": "object",
                "properties": {
                    k: {"type": "boolean"}
                    for k in ("blacklisted", "callerid_rested", "campaign_paused")
                },
            },
        },
    },
    "ComplaintPage": {
        "type": "object",
        "properties": {
            "complaints": {"type": "array", "items": {"type": "object"}},
            "next_cursor": NULLABLE_STRING,
        },
    },
    "ImportSummary": {
        "type": "object",
        "properties": {
            "imported": {"type": "integer"},
            "bad_rows": {"type": "integer"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    },
    "CallerId": {
        "type": "object",
        "required": ["number", "state", "health"],
        "properties": {
            "number": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in CallerIdState]},
            "reason": NULLABLE_STRING,
            "health": {
                "type": "object",
                "properties": {
                    "calls": {"type": "integer"},
                    "answer_seizure_ratio": {"type": ["number", "null"]},
                    "short_call_share": {"type": ["number", "null"]},
                    "carrier_rejection_share": {"type": ["number", "null"]},
                    "complaints_24h": {"type": "integer"},
                },
            },
        },
    },
}


def document() -> J:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dialguard admin API",
            "version": __version__,
            "description": "Decisions, scrubbing, blacklists, complaints, caller IDs and "
            "campaigns. Every route but the probes and this document needs "
            "`Authorization: Bearer <api.token>` when a token is configured.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi)
