"""/openapi.json with the request bodies described by the pydantic models in protocol.py and ops_routes.py.

The routes read their bodies themselves (a size cap while reading, strict parsing, OpenAI-style 4xx errors naming
the field), so FastAPI does not see the models as parameters; each route declares its body with
`openapi_extra=request_body(Model)` (FastAPI's documented way for a route that parses its own body) and
`install` puts the models' JSON schemas, nested ones included, under components/schemas.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def request_body(*models: type[BaseModel]) -> dict:
    """openapi_extra for a route taking a JSON body of one of `models`."""
    refs = [{"$ref": REF.format(model=m.__name__)} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(
        model="ErrorResponse")}}}}


ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}},
}


def install(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Serve the schema with `models` (and the OpenAI error body) as components."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                one = model.model_json_schema(ref_template=REF, mode="validation")
                components.update(one.pop("$defs", {}))
                components[model.__name__] = one
            components["ErrorResponse"] = ERROR_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
