"""The OpenAPI document of the manager, generated from the pydantic models it validates with."""

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from flops import __version__
from flops.events import Event
from flops.learner_records import LearnersView
from flops.sla import ProjectSLA
from flops_manager.bodies import MockRequest, TokenRequest
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


MOCKED = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "example": "New Mock-Data-Provider started successfully"},
        "data_tag": {"type": "string"},
        "owner": {"type": "string"},
        "nodes": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["message", "data_tag", "nodes"],
}
TOKEN = {
    "type": "object",
    "properties": {"customer_id": {"type": "string"}, "token": {"type": "string"}, "token_id": {"type": "string"}},
    "required": ["customer_id", "token", "token_id"],
}
TOKEN_RECORDS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "token_id": {"type": "string"},
            "customer_id": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "customer"]},
            "created_at": {"type": "number"},
        },
        "required": ["token_id", "customer_id", "role"],
    },
}
REVOKED = {
    "type": "object",
    "properties": {"revoked": {"type": "string"}, "customer_id": {"type": "string"}},
    "required": ["revoked"],
}
DATA_TAGS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "data_tag": {"type": "string"},
            "owners": {"type": "array", "items": {"type": "string"}},
            "shared": {"type": "boolean"},
            "nodes": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["data_tag", "nodes"],
    },
}
# Every status the API answers with, and what it means; each operation lists those it uses.
STATUS_TEXT = {
    "400": "malformed request: no or undecodable body, a NUL or control character, a bad query value",
    "401": "no or bad token",
    "403": "not allowed for this token",
    "404": "not found (or another customer's)",
    "409": "conflicts with what exists (active projects, a data tag owned by another)",
    "413": "body larger than the limit (FLOPS_API_MAX_BODY_BYTES)",
    "422": "invalid input, or a repository source this manager does not take",
    "429": "over a per-customer quota (disk, data tags)",
    "502": "a backend or the repository check failed unexpectedly",
    "503": "busy (slow-work slots full: see Retry-After) or an identity provider away",
    "504": "the dry run or mock data took longer than its time limit",
}
# Any authenticated call: a bad URL, a bad token, an identity provider away.
AUTHENTICATED = ("400", "401", "503")


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, tuple[str, dict[str, Any] | None]], *codes: str) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for code, (text, schema) in ok.items():
        answers[code] = {"description": text, **(_json(schema) if schema else {})}
    for code in sorted(set(codes)):
        answers[code] = {"description": STATUS_TEXT[code], **_json(_ref("Error"))}
    return answers


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(ProjectSLA, "validation"), (Project, "serialization"), (Event, "serialization"),
         (MockRequest, "validation"), (TokenRequest, "validation"), (LearnersView, "serialization")],
        ref_template="#/components/schemas/{model}",
    )  # fmt: skip
    components = dict(schemas.get("$defs", {}))
    components["Error"] = ERROR
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    project_id = {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}}
    token_id = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    paths = {
        "/": {"get": {"summary": "health", "security": [], "responses": _responses({"200": ("ok", None)}, "400")}},
        "/api/openapi.json": {
            "get": {"summary": "this document", "security": [],
                    "responses": _responses({"200": ("OpenAPI", None)}, "400")}
        },
        "/api/flops/projects": {
            "post": {
                "summary": "start a project from an SLA (JSON or YAML), or only check it with dry_run",
                "description": (
                    "Validates the SLA, the repository source (the manager's FLOPS_REPO_* policy) and the data "
                    "tags (the customer's own or shared), and answers 200 at once (FLOps's `message`, plus "
                    "`project_id` and `status_url`); the builder fetches and checks the repository, "
                    "and a bad one fails the project at `building`. With `dry_run=1` the repository is also "
                    "fetched and checked, within the manager's time limit, and nothing is stored or deployed."
                ),
                "security": secured,
                "parameters": [
                    {"name": "dry_run", "in": "query", "description": "1 or true: check only, start nothing",
                     "schema": {"type": "string", "enum": ["1", "true", "0", "false"]}},
                ],
                "requestBody": body("ProjectSLA"),
                "responses": _responses(
                    {"200": ("project accepted: {message, project_id, status_url}; with dry_run: the SLA "
                             "and the repository are valid", {"oneOf": [SUBMITTED, DRY_RUN_RESULT]})},
                    *AUTHENTICATED, "403", "413", "422", "429", "502", "504",
                ),
            },
            "get": {
                "summary": "list projects, optionally filtered by status",
                "security": secured,
                "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}}],
                "responses": _responses({"200": ("projects", None)}, *AUTHENTICATED),
            },
        },
        "/api/flops/projects/{project_id}": {
            "parameters": [project_id],
            "get": {"summary": "project state", "security": secured,
                    "responses": _responses({"200": ("project", None)}, *AUTHENTICATED, "404")},
            "delete": {"summary": "cancel and tear down", "security": secured,
                       "responses": _responses({"200": ("already over: its model server stopped", None),
                                                "202": ("cancelling", None)}, *AUTHENTICATED, "404")},
        },
        "/api/flops/projects/{project_id}/events": {
            "parameters": [project_id],
            "get": {"summary": "project events", "security": secured,
                    "responses": _responses({"200": ("events", None)}, *AUTHENTICATED, "404")},
        },
        "/api/flops/projects/{project_id}/learners": {
            "parameters": [project_id, {"name": "round", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
            "get": {"summary": "each learner's figures per round, and the outliers flagged", "security": secured,
                    "responses": _responses({"200": ("learners and flags", _ref("LearnersView"))},
                                            *AUTHENTICATED, "400", "404")},
        },
        "/api/flops/projects/{project_id}/logs": {
            "parameters": [
                project_id,
                {"name": "component", "in": "query", "schema": {"type": "string"}},
                {"name": "tail", "in": "query", "description": "lines per component (at most FLOPS_API_MAX_LOG_LINES)",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 999999999}},
            ],
            "get": {"summary": "component logs: the end of each, bounded in lines and bytes", "security": secured,
                    "responses": _responses({"200": ("logs by component", None)}, *AUTHENTICATED, "404", "502")},
        },
        "/api/flops/tracking": {
            "get": {"summary": "the customer's MLflow tracking URL", "security": secured,
                    "responses": _responses({"200": ("tracking_server_url", None)}, *AUTHENTICATED)},
        },
        "/api/flops/mocks": {
            "post": {"summary": "partition a data set into local node folders under a data tag the caller owns",
                     "description": "Customers: bundled data sets only, for themselves; at most FLOPS_MAX_MOCK_NODES "
                                    "nodes; a tag another owner holds is never overwritten (409).",
                     "security": secured, "requestBody": body("MockRequest"),
                     "responses": _responses({"200": ("{message, data_tag, owner, nodes: rows per node}", MOCKED)},
                                             *AUTHENTICATED, "403", "409", "413", "422", "429", "504")},
        },
        "/api/flops/data": {
            "get": {"summary": "the data tags the caller may train on (all for the admin)", "security": secured,
                    "responses": _responses({"200": ("data tags", DATA_TAGS)}, *AUTHENTICATED)},
        },
        "/api/flops/tokens": {
            "post": {"summary": "create a customer token (admin)", "security": secured,
                     "requestBody": body("TokenRequest"),
                     "responses": _responses({"201": ("token, shown once", TOKEN)},
                                             *AUTHENTICATED, "403", "413", "422")},
            "get": {"summary": "the tokens (admin): ids, customers, roles, never the tokens", "security": secured,
                    "responses": _responses({"200": ("token records", TOKEN_RECORDS)}, *AUTHENTICATED, "403")},
        },
        "/api/flops/tokens/{token_id}": {
            "delete": {"summary": "revoke a token at once (admin); the last admin token cannot be",
                       "security": secured, "parameters": [token_id],
                       "responses": _responses({"200": ("revoked", REVOKED)}, *AUTHENTICATED, "403", "404", "409")},
        },
        "/api/flops/database": {
            "delete": {"summary": "reset the store (admin)", "security": secured,
                       "responses": _responses({"200": ("reset", None)}, *AUTHENTICATED, "403", "409")},
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
