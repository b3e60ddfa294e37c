"""The OpenAPI document matches the app's routes, both ways, and is valid OpenAPI 3.1."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from dialguard.api.openapi import document
from tests.integration.api_harness import api_client

METHODS = {"get", "put", "post", "delete", "patch"}


async def test_every_route_is_documented_and_every_documented_path_is_a_route(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with api_client(pool, tmp_path) as client:
        routes = {
            (route.resource.canonical, route.method.lower())
            for route in client.app.router.routes()
            if route.resource is not None and route.method.lower() in METHODS
        }
        async with client.get("/v1/openapi.json") as resp:
            served = await resp.json()
    documented = {
        (path, method)
        for path, item in served["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented paths that are no route"
    assert served == document()


def test_the_document_is_valid_openapi_3_1() -> None:
    from jsonschema_rs import validator_for  # installed with schemathesis

    doc = document()
    assert doc["openapi"].startswith("3.1")
    refs = _refs(doc)
    assert refs <= {f"#/components/schemas/{name}" for name in doc["components"]["schemas"]}
    for schema in doc["components"]["schemas"].values():
        validator_for(schema)  # each is a valid JSON Schema


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if "$ref" in node else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()
