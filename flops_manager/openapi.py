"""The OpenAPI document of the manager, generated from the pydantic models it validates with."""

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from flops import __version__
from flops.events import Event
from flops.sla import ProjectSLA
from flops_manager.models import Project


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "details": {}},
    "required": ["message"],
}
SUBMITTED = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "example": "New FLOps project started successfully"},
        "project_id": {"type": "string"},
        "status_url": {"type": "string"},
    },
    "required": ["message", "project_id", "status_url"],
}
DRY_RUN_RESULT = {
    "type": "object",
    "properties": {
        "valid": {"type": "boolean"},
        "repo_url": {"type": "string"},
        "ref": {"type": ["string", "null"]},
        "commit": {"type": "string"},
        "backend": {"type": "string"},
        "stage_durations": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "required": ["valid", "commit"],
}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(ProjectSLA, "validation"), (Project, "serialization"), (Event, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    components = dict(schemas.get("$defs", {}))
    components["Error"] = ERROR
    errors = {code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
              for code, text in (("401", "no or bad token"), ("403", "not allowed"), ("404", "not found"),
                                 ("422", "invalid input"))}  # fmt: skip
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths = {
        "/": {"get": {"summary": "health", "security": [], "responses": {"200": {"description": "ok"}}}},
        "/api/flops/projects": {
            "post": {
                "summary": "start a project from an SLA (JSON or YAML), or only check it with dry_run",
                "description": (
                    "Validates the SLA and answers 200 at once (FLOps's `message`, plus `project_id` and "
                    "`status_url`); the builder fetches and checks the repository, "
                    "and a bad one fails the project at `building`. With `dry_run=1` the repository is also "
                    "fetched and checked, within the manager's time limit, and nothing is stored or deployed."
                ),
                "security": secured,
                "parameters": [
                    {"name": "dry_run", "in": "query", "description": "1 or true: check only, start nothing",
                     "schema": {"type": "string", "enum": ["1", "true", "0", "false"]}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ProjectSLA")}}},
                "responses": {
                    "200": {"description": "project accepted: {message, project_id, status_url}; with dry_run: the SLA "
                                           "and the repository are valid",
                            "content": {"application/json": {"schema": {"oneOf": [SUBMITTED, DRY_RUN_RESULT]}}}},
                    **errors,
                    "504": {"description": "dry run: the repository check ran out of time",
                            "content": {"application/json": {"schema": _ref("Error")}}},
                },
            },
            "get": {
                "summary": "list projects, optionally filtered by status",
                "security": secured,
                "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "projects"}, **errors},
            },
        },
        "/api/flops/projects/{project_id}": {
            "parameters": [{"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "project state", "security": secured,
                    "responses": {"200": {"description": "project"}, **errors}},
            "delete": {"summary": "cancel and tear down", "security": secured,
                       "responses": {"202": {"description": "cancelling"}, **errors}},
        },
        "/api/flops/projects/{project_id}/events": {
            "parameters": [{"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "project events", "security": secured,
                    "responses": {"200": {"description": "events"}, **errors}},
        },
        "/api/flops/projects/{project_id}/logs": {
            "parameters": [
                {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "component", "in": "query", "schema": {"type": "string"}},
                {"name": "tail", "in": "query", "schema": {"type": "integer"}},
            ],
            "get": {"summary": "component logs", "security": secured,
                    "responses": {"200": {"description": "logs by component"}, **errors}},
        },
        "/api/flops/tracking": {
            "get": {"summary": "the customer's MLflow tracking URL", "security": secured,
                    "responses": {"200": {"description": "tracking_server_url"}, **errors}},
        },
        "/api/flops/mocks": {
            "post": {"summary": "partition a bundled data set into local node folders", "security": secured,
                     "responses": {"200": {"description": "{message, data_tag, nodes: rows per node}"}, **errors}},
        },
        "/api/flops/tokens": {
            "post": {"summary": "create a customer token (admin)", "security": secured,
                     "responses": {"201": {"description": "token, shown once"}, **errors}},
        },
        "/api/flops/database": {
            "delete": {"summary": "reset the store (admin)", "security": secured,
                       "responses": {"200": {"description": "reset"}, **errors}},
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "FLOps manager", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
