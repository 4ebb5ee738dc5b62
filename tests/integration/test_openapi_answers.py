"""Every answer of the API is described in the OpenAPI document: a client (and the console, which renders the
same types) can rely on the schema instead of reading handlers. A route returning a hand-built dict shows up as
an untyped object here and fails this test."""

from __future__ import annotations

from typing import Any

from tests.helpers import openapi_document

SUCCESS = ("200", "201", "202")
# Answers that are not JSON documents: files, pages and images, described by their media type.
NON_JSON = ("text/csv", "text/html", "text/plain", "image/", "application/octet-stream", "message/rfc822")


def _openapi() -> dict[str, Any]:
    return openapi_document()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def _untyped(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    """An object with no declared properties (a dict[str, Any]), or no schema at all."""
    schema = _resolve(doc, schema)
    if not schema:
        return True
    if schema.get("type") == "array":
        return _untyped(doc, schema.get("items", {}))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return any(_untyped(doc, s) for s in schema[key] if s.get("type") != "null")
    return schema.get("type") == "object" and not schema.get("properties")


def _undescribed_answers() -> list[str]:
    doc = _openapi()
    problems = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            answers = {code: r for code, r in op.get("responses", {}).items() if code in SUCCESS}
            for code, answer in answers.items():
                content = answer.get("content", {})
                json_schema = content.get("application/json", {}).get("schema")
                if json_schema is None:
                    if any(t.startswith(NON_JSON) for t in content) or not content:
                        continue
                    problems.append(f"{method.upper()} {path} {code}: no JSON schema ({sorted(content)})")
                elif _untyped(doc, json_schema):
                    problems.append(f"{method.upper()} {path} {code}: untyped answer")
    return problems


def test_every_json_answer_has_a_typed_schema() -> None:
    problems = _undescribed_answers()
    assert problems == [], "\n".join(problems)


def test_the_check_sees_an_untyped_answer() -> None:
    doc = {"components": {"schemas": {"Typed": {"type": "object", "properties": {"id": {"type": "integer"}}}}}}
    assert _untyped(doc, {"type": "object", "additionalProperties": True})
    assert _untyped(doc, {})
    assert _untyped(doc, {"type": "array", "items": {"type": "object"}})
    assert not _untyped(doc, {"$ref": "#/components/schemas/Typed"})
    assert not _untyped(doc, {"anyOf": [{"$ref": "#/components/schemas/Typed"}, {"type": "null"}]})
