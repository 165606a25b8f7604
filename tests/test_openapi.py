"""schemas/openapi/worker-api.v1.yaml: a consistent OpenAPI 3.1 document of exactly the routes the worker serves."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from stream.worker.api.server import ROUTES
from tests.support.openapi import document, resolve


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_describes_exactly_the_served_routes() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(method, path) for method, path, _ in ROUTES}


def test_every_reference_resolves_and_every_schema_is_valid_json_schema() -> None:
    doc = document()
    for ref in _refs(doc):
        assert ref.startswith("#/") and resolve({"$ref": ref}) is not None, ref
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                response = resolve(response)
                assert response["description"], (method, path, status)
                if status == "503" and path.startswith("/v1/"):
                    assert "Retry-After" in response["headers"], (method, path)


def test_error_schema_takes_one_line_reasons_only() -> None:
    error = document()["components"]["schemas"]["Error"]
    v = Draft202012Validator(error)
    assert v.is_valid({"error": "user_id must be a string of 1 to 64 characters"})
    assert not v.is_valid({"error": "two\nlines"}) and not v.is_valid({"reason": "x"})
