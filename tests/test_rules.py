"""Rule files: loading, validation with file/line/field errors, and every rule's own examples."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.errors import RuleError
from detector.examples import check_example
from detector.rules import DEFAULT_RULES_DIR, Rule, RuleExample, load_rule, load_rules

RULE_FILE = DEFAULT_RULES_DIR / "high_port_count_by_client_ip.yaml"
ALL_RULES = load_rules(DEFAULT_RULES_DIR)


def _examples() -> list[tuple[Rule, RuleExample]]:
    return [(rule, example) for rule in ALL_RULES for example in rule.examples]


@pytest.mark.parametrize(("rule", "example"), _examples(), ids=lambda x: getattr(x, "name", None) or "")
def test_every_rule_example_behaves_as_it_says(rule: Rule, example: RuleExample) -> None:
    assert check_example(rule, example) == []


def test_bundled_rule_has_the_sentinel_fields() -> None:
    rule = load_rule(RULE_FILE)
    assert rule.id == "44a555d8-ecee-4a25-95ce-055879b4b14b"
    assert rule.name == "High count of connections by client IP on many ports"
    assert (rule.severity, rule.version, rule.kind) == ("Medium", "1.0.2", "Scheduled")
    assert rule.query_frequency == rule.query_period == timedelta(days=1)
    assert (rule.trigger_operator, rule.trigger_threshold) == ("gt", 0)
    assert rule.tactics == ("InitialAccess",)
    assert rule.techniques == ("T1190",)
    assert rule.entity_mappings[0].entity_type == "IP"
    assert rule.entity_mappings[0].fields == (("Address", "IPCustomEntity"),)
    assert rule.required_data_connectors[0]["dataTypes"] == ["W3CIISLog"]
    assert "makeset(sPort)" in rule.query
    assert rule.parameters == {"timeBin": "10m", "portThreshold": 30, "maxSetSize": 128}


def test_triggers_compares_the_result_count() -> None:
    rule = ALL_RULES[0]
    assert not rule.triggers(0)
    assert rule.triggers(1)


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _base() -> dict[str, Any]:
    return yaml.safe_load(RULE_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "not-a-guid", "field 'id'"),
        ("id", "00000000-0000-0000-0000-000000000000", "no Python logic is registered"),
        ("severity", "Critical", "field 'severity': 'Critical' is not one of"),
        ("queryFrequency", "1 day", "field 'queryFrequency'"),
        ("queryPeriod", "15d", "between 5m and 14d"),
        ("queryFrequency", "2d", "field 'queryFrequency'"),
        ("triggerOperator", "gte", "field 'triggerOperator'"),
        ("triggerThreshold", "0", "field 'triggerThreshold': must be a int"),
        ("tactics", ["Initial Access"], "field 'tactics'"),
        ("relevantTechniques", ["1190"], "field 'relevantTechniques'"),
        ("version", "1.0", "field 'version'"),
        (
            "entityMappings",
            [{"entityType": "IP", "fieldMappings": [{"identifier": "Address", "columnName": "nope"}]}],
            "not an output column",
        ),
        ("parameters", {"timeBin": "7m", "portThreshold": 30, "maxSetSize": 128}, "divides a day"),
        ("parameters", {"timeBin": "10m", "portThreshold": 200, "maxSetSize": 128}, "can never fire"),
        ("parameters", {"timeBin": "10m", "portThreshold": 30}, "missing parameter"),
        ("parameters", {"timeBin": "10m", "portThreshold": 30, "maxSetSize": 128, "x": 1}, "unknown parameter"),
        ("examples", [], "at least one example that fires"),
    ],
)
def test_bad_field_is_an_error_naming_file_line_and_field(tmp_path: Path, field: str, value: Any, message: str) -> None:
    data = _base()
    data[field] = value
    path = _write(tmp_path, data)
    with pytest.raises(RuleError) as caught:
        load_rule(path)
    text = str(caught.value)
    assert message in text
    assert text.startswith(f"{path}:")  # file:line


@pytest.mark.parametrize("field", ["id", "name", "severity", "queryPeriod", "tactics", "query", "parameters", "examples"])
def test_missing_field_is_named(tmp_path: Path, field: str) -> None:
    data = _base()
    del data[field]
    with pytest.raises(RuleError, match=f"field '{field}': is missing"):
        load_rule(_write(tmp_path, data))


def test_example_with_bad_row_names_the_example(tmp_path: Path) -> None:
    data = _base()
    data["examples"][0]["rows"][0]["each"] = {"sPort": "30-1"}
    with pytest.raises(RuleError, match=r"examples\[0\]\.rows\[0\]\.each\.sPort': must be a non-empty list"):
        load_rule(_write(tmp_path, data))


def test_example_missing_a_required_column(tmp_path: Path) -> None:
    data = _base()
    del data["examples"][1]["rows"][0]["sIP"]
    with pytest.raises(Exception, match="missing required column 'sIP'"):
        load_rule(_write(tmp_path, data))


def test_a_wrong_example_is_reported_not_hidden(tmp_path: Path) -> None:
    data = _base()
    data["examples"][0]["expect"][0]["portCount"] = 31
    rule = load_rule(_write(tmp_path, data))
    problems = [p for e in rule.examples for p in check_example(rule, e)]
    assert len(problems) == 1
    assert "portCount is 30, expected 31" in problems[0]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text("id: x\nname: [unclosed\n", encoding="utf-8")
    with pytest.raises(RuleError, match=rf"{path}:\d+: is not valid YAML"):
        load_rule(path)


def test_the_libyaml_loader_reads_every_rule_like_the_pure_python_one() -> None:
    """rules.py uses libyaml's CSafeLoader for speed; it must build the very same data and line marks."""
    from detector import rules

    assert rules._YAML_LOADER is yaml.CSafeLoader  # the wheel ships libyaml; else the speed-up is silently lost
    for path in sorted(DEFAULT_RULES_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=rules._YAML_LOADER) == yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506
        assert rules._top_level_lines(text) == {
            key.value: key.start_mark.line + 1 for key, _ in yaml.compose(text, Loader=yaml.SafeLoader).value
        }


def test_duplicate_rule_ids_are_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(RULE_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(RuleError, match="duplicates the id"):
        load_rules(tmp_path)


def test_rule_can_be_named_by_id() -> None:
    assert load_rules("44A555D8-ECEE-4A25-95CE-055879B4B14B")[0].path == str(RULE_FILE)
