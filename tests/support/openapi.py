"""The worker API's OpenAPI document, and checks of real answers against it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

DOC = Path(__file__).resolve().parents[2] / "schemas" / "openapi" / "worker-api.v1.yaml"


@cache
def document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return doc


def resolve(node: Any) -> Any:
    """``node`` with a local ``$ref`` followed (one level)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_answer(path: str, method: str, status: int, headers: dict[str, str], body: Any) -> None:
    """Raise if the answer is not one the document describes (status, JSON schema, declared headers)."""
    op = document()["paths"][path][method.lower()]
    responses = op["responses"]
    assert str(status) in responses, f"{method} {path}: status {status} not documented"
    response = resolve(responses[str(status)])
    for name in response.get("headers", {}):
        assert name in headers, f"{method} {path} {status}: header {name} missing"
    schema = resolve(response["content"]["application/json"]["schema"])
    Draft202012Validator({**schema, "components": document()["components"]}).validate(body)
