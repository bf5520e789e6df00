"""The SLA reference is the contract: every JSON/YAML body in docs/sla.md is accepted verbatim,
and every field its table names exists in the model (FLOps's bodies included)."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flops.sla import ProjectSLA, SLAError, parse_sla
from flops_manager.api import MockRequest

SLA_DOC = Path(__file__).resolve().parent.parent / "docs" / "sla.md"
BLOCK = re.compile(r"```(json|yaml)\n(.*?)```", re.DOTALL)


def documented_bodies() -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in BLOCK.findall(SLA_DOC.read_text(encoding="utf-8"))]


def load(kind: str, text: str) -> Any:
    return json.loads(text) if kind == "json" else yaml.safe_load(text)


def test_the_reference_shows_flops_project_and_mock_bodies() -> None:
    bodies = [load(kind, text) for kind, text in documented_bodies()]
    assert sum("mock_data_configuration" in body for body in bodies) >= 1
    assert sum("ml_repo_url" in body for body in bodies) >= 3


@pytest.mark.parametrize(("kind", "text"), documented_bodies())
def test_every_documented_body_is_accepted_verbatim(kind: str, text: str) -> None:
    body = load(kind, text)
    if "mock_data_configuration" in body:
        MockRequest.model_validate(body)
        return
    sla = parse_sla(text.encode())
    assert sla.ml_repo_url == body["ml_repo_url"]
    tags = body.get("training_configuration", {}).get("data_tags", [])
    assert sla.training_configuration.data_tags == ([tags] if isinstance(tags, str) else tags)


def test_every_field_in_the_table_is_a_field_of_the_sla() -> None:
    rows = re.findall(r"^\| `([^`]+)`", SLA_DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(rows) >= 20
    minimal = {"ml_repo_url": "x", "ml_model_flavor": "sklearn"}
    known = set(ProjectSLA.model_json_schema(by_alias=False)["properties"]) | {"customerID"}
    for field in rows:
        top, _, nested = field.partition(".")
        assert top in known, f"docs/sla.md names {field}, which ProjectSLA does not have"
        if nested:
            sub = ProjectSLA.model_fields[top].annotation
            assert nested in sub.model_fields, f"docs/sla.md names {field}"  # type: ignore[union-attr]
    assert parse_sla(json.dumps(minimal).encode()).customer_id == "Admin"


def test_a_data_tag_string_is_one_tag_or_a_comma_list_and_bad_tags_still_fail() -> None:
    def tags(value: Any) -> list[str]:
        body = {"ml_repo_url": "x", "ml_model_flavor": "sklearn", "training_configuration": {"data_tags": value}}
        return parse_sla(json.dumps(body).encode()).training_configuration.data_tags

    assert tags("mnist") == ["mnist"]
    assert tags("a, b") == ["a", "b"]
    assert tags(["x"]) == ["x"]
    with pytest.raises(SLAError, match="data_tags"):
        tags("../etc")
