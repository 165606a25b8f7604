"""schemas/openapi/worker-api.v1.yaml: a consistent OpenAPI 3.1 document of exactly the routes the worker serves."""

from __future__ import annotations

from typing import Any

import numpy as np
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


def test_recommendations_answer_matches_the_document() -> None:
    from tests.unit.test_recommend import T0, _article, _model, _recs

    articles = {b"a": _article([T0 + 5], T0), b"b": _article([T0 + 9, T0 + 10], T0)}
    recs = _recs(_model(["a", "b"], np.array([[1.0, 0.0], [0.5, 0.5]]), (0.5, 0.25, 0.25)), articles, 96)
    recs.record([{"event_type": "article_view", "user_id": "u", "article_id": "a", "brand": "x", "category": "y"}])
    body = {**recs.answer("u", ["a"], 10), "partition": 3}
    assert [r["article_id"] for r in body["recommendations"]] == ["b"]
    schema = document()["components"]["schemas"]["Recommendations"]
    Draft202012Validator({**schema, "components": document()["components"]}).validate(body)
    cold = {**_recs(None, articles, 96).answer("new-user", [], 1), "partition": 0}
    Draft202012Validator({**schema, "components": document()["components"]}).validate(cold)
    assert cold["model_version"] is None and cold["recommendations"][0]["reason"] == "popular"
