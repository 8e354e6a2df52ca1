"""The promotion policy: checked-in files load, round-trip, and bad files fail naming the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tuneloop.registry.policy import (
    ApprovalPolicy,
    CanaryPolicy,
    CompressPolicy,
    ConversionPolicy,
    GatePolicy,
    Policy,
    PolicyError,
    RetentionPolicy,
    dump_policy,
    load_policy,
    parse_policy,
)

REGISTRY = Path(__file__).resolve().parents[1] / "registry"
SECTIONS: dict[str, type[BaseModel]] = {
    "gates": GatePolicy,
    "approval": ApprovalPolicy,
    "conversion": ConversionPolicy,
    "canary": CanaryPolicy,
    "retention": RetentionPolicy,
    "compress": CompressPolicy,
}


def _raw(name: str = "policy.yaml") -> dict[str, Any]:
    data = yaml.safe_load((REGISTRY / name).read_text())
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_checked_in_policies_load_and_differ_where_documented() -> None:
    prod = load_policy(REGISTRY / "policy.yaml")
    demo = load_policy(REGISTRY / "policy.demo.yaml")
    assert prod.approval.required and not prod.approval.auto_approve
    assert demo.approval.auto_approve
    # The demo refuses the same bad models at the gates and the same bad INT8 conversions.
    assert demo.gates == prod.gates
    assert demo.conversion == prod.conversion
    assert prod.conversion.int8_min_argmax_agreement == 0.995
    assert prod.canary.steps == [5, 25, 50, 100]


def test_every_policy_file_sets_every_field() -> None:
    # Numbers live in the YAML, not in code defaults: each file names each field explicitly.
    for name in ("policy.yaml", "policy.demo.yaml"):
        data = _raw(name)
        for section, model in SECTIONS.items():
            assert set(data[section]) == set(model.model_fields), (name, section)


def test_every_field_has_a_description_and_a_yaml_comment() -> None:
    text = (REGISTRY / "policy.yaml").read_text().splitlines()
    for section, model in SECTIONS.items():
        for field_name, field in model.model_fields.items():
            assert field.description, f"{section}.{field_name} has no description"
            line = next(i for i, ln in enumerate(text) if re.match(rf"\s+{field_name}:", ln))
            assert text[line - 1].strip().startswith("#"), f"{section}.{field_name} has no comment above it"
    for field_name, field in Policy.model_fields.items():
        assert field.description, field_name


def test_policy_round_trips_through_yaml(tmp_path: Path) -> None:
    policy = load_policy(REGISTRY / "policy.yaml")
    path = tmp_path / "copy.yaml"
    path.write_text(dump_policy(policy))
    assert load_policy(path) == policy
    assert Policy.model_validate(policy.model_dump()) == policy


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("gates", "min_macro_f1", 7, "less than or equal to 1"),
        ("gates", "min_label_support", 0, "greater than or equal to 1"),
        ("conversion", "int8_min_argmax_agreement", "high", "valid number"),
        ("canary", "steps", [5, 50, 25, 100], "strictly increase"),
        ("canary", "steps", [5, 25, 50], "last step must be 100"),
        ("approval", "approvers", [], "null (anyone)"),
        ("compress", "depths", [3, 3], "distinct layer counts"),
        ("compress", "alpha", 1.5, "less than or equal to 1"),
    ],
)
def test_invalid_value_error_names_file_and_field(
    tmp_path: Path, section: str, field: str, value: Any, expected: str
) -> None:
    data = _raw()
    data[section][field] = value
    path = _write(tmp_path, data)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{section}.{field}" in message
    assert expected in message


def test_missing_and_misspelt_fields_are_named(tmp_path: Path) -> None:
    data = _raw()
    del data["gates"]["max_golden_regression_points"]
    data["gates"]["min_macro_fl"] = 0.7
    with pytest.raises(PolicyError) as caught:
        load_policy(_write(tmp_path, data))
    assert "gates.max_golden_regression_points: required field is missing" in str(caught.value)
    assert "gates.min_macro_fl: unknown field" in str(caught.value)
    assert len(caught.value.problems) == 2


def test_unreadable_files_fail_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("gates: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    with pytest.raises(PolicyError, match="expected a mapping"):
        parse_policy(["gates"], "inline")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_policy(tmp_path / "nowhere.yaml")


def test_approval_defaults_are_the_safe_ones() -> None:
    approval = ApprovalPolicy()
    assert approval.required and not approval.auto_approve and approval.approvers is None
    data = _raw()
    del data["approval"]
    assert parse_policy(data).approval == approval
