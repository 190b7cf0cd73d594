"""Rule files: loading, validation with file/line/field errors, and every rule's own examples."""

from __future__ import annotations

import gzip
import re
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


@pytest.mark.parametrize(
    ("operator", "threshold", "fires_at"),
    [
        ("gt", 0, {1, 2, 3, 5}),
        ("gt", 2, {3, 5}),
        ("lt", 2, {0, 1}),
        ("lt", 0, set()),
        ("eq", 2, {2}),
        ("eq", 0, {0}),
        ("ne", 2, {0, 1, 3, 5}),
        ("ne", 0, {1, 2, 3, 5}),
    ],
)
def test_triggers_compares_the_result_count_with_every_operator(
    tmp_path: Path, operator: str, threshold: int, fires_at: set[int]
) -> None:
    data = _base()
    data["triggerOperator"], data["triggerThreshold"] = operator, threshold
    rule = load_rule(_write(tmp_path, data))
    assert {count for count in (0, 1, 2, 3, 5) if rule.triggers(count)} == fires_at


def test_every_sentinel_trigger_operator_is_tested() -> None:
    from detector.rules import TRIGGER_OPERATORS

    assert set(TRIGGER_OPERATORS) == {"gt", "lt", "eq", "ne"}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _base() -> dict[str, Any]:
    data = yaml.safe_load(RULE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


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
        ("parameters", {"timeBin": "1.5ms", "portThreshold": 30, "maxSetSize": 128}, "whole milliseconds"),
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
    path = _write(tmp_path, data)
    with pytest.raises(RuleError, match="missing required column 'sIP'") as caught:
        load_rule(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: field 'examples\[1\]\.rows\[0\]'", str(caught.value))


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
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        fast = yaml.compose(text, Loader=rules._YAML_LOADER)
        assert node is not None and fast is not None, f"{path} is empty"
        lines = rules._node_lines(fast, str(path))
        assert {k: v for k, v in lines.items() if "." not in k and "[" not in k} == {
            key.value: key.start_mark.line + 1 for key, _ in node.value
        }
        data, _ = rules._parse(text, str(path))
        assert data == yaml.load(text, Loader=yaml.SafeLoader)


def test_duplicate_rule_ids_are_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(RULE_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(RuleError, match="duplicates the id"):
        load_rules(tmp_path)


def test_rule_can_be_named_by_id() -> None:
    assert load_rules("44A555D8-ECEE-4A25-95CE-055879B4B14B")[0].path == str(RULE_FILE)


def _bundled_text() -> str:
    return RULE_FILE.read_text(encoding="utf-8")


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.startswith(needle)]
    return lines[occurrence - 1]


def test_a_duplicate_top_level_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = _bundled_text().replace("severity: Medium\n", "severity: Medium\nseverity: High\n")
    path = tmp_path / "rule.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_rule(path)
    second = _line_of(text, "severity:", 2)
    assert str(caught.value) == f"{path}:{second}: field 'severity': appears twice (first on line {second - 1}); keep one"


def test_a_duplicate_key_deep_inside_an_example_is_refused(tmp_path: Path) -> None:
    text = _bundled_text().replace("sIP: 10.0.0.4,", "sIP: 10.0.0.4, sIP: 10.9.9.9,", 1)
    path = tmp_path / "rule.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError, match=r"rule\.yaml:\d+: field 'examples\[0\]\.rows\[0\]\.sIP': appears twice"):
        load_rule(path)


@pytest.mark.parametrize(
    ("wrong", "right"), [("severty", "severity"), ("queryfrequency", "queryFrequency"), ("tactic", "tactics")]
)
def test_a_misspelt_top_level_field_is_refused_with_a_suggestion(tmp_path: Path, wrong: str, right: str) -> None:
    text = _bundled_text() + f"{wrong}: x\n"
    path = tmp_path / "rule.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_rule(path)
    line = len(text.splitlines())
    assert str(caught.value) == f"{path}:{line}: field '{wrong}': is not a rule field; did you mean '{right}'?"


def test_an_unknown_field_with_no_close_name_lists_where_to_look(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text(_bundled_text() + "zzzqqq: 1\n", encoding="utf-8")
    with pytest.raises(RuleError, match="field 'zzzqqq': is not a rule field; see the README's Rules section"):
        load_rule(path)


def test_optional_sentinel_fields_are_accepted(tmp_path: Path) -> None:
    data = _base()
    data.update(
        {
            "tags": ["Web"],
            "metadata": {"source": {"kind": "Community"}},
            "status": "Available",
            "eventGroupingSettings": {"aggregationKind": "AlertPerResult"},
            "customDetails": {"Ports": "portCount"},
            "alertDetailsOverride": {"alertDisplayNameFormat": "scan from {{cIP}}"},
            "incidentConfiguration": {"createIncident": True},
            "suppressionEnabled": False,
            "suppressionDuration": "PT5H",
        }
    )
    assert load_rule(_write(tmp_path, data)).id == "44a555d8-ecee-4a25-95ce-055879b4b14b"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_bundled_text().encode("utf-16"), "is UTF-16 (little-endian, with a byte order mark), not UTF-8 text"),
        (_bundled_text().encode("utf-16-le"), "looks like UTF-16 (little-endian) without a byte order mark"),
        (_bundled_text().encode("utf-16-be"), "looks like UTF-16 (big-endian) without a byte order mark"),
        ("id: x\nname: caf\u00e9\n".encode("latin-1"), "is not UTF-8 (byte 0xe9 at offset 15)"),
        (gzip.compress(_bundled_text().encode("utf-8")), "is gzip-compressed, not UTF-8 text"),
        (b"id: x\n\x00\x00\x00\x00", "holds NUL bytes (the first at offset 6)"),
    ],
)
def test_a_rule_file_that_is_not_utf8_says_what_it_looks_like(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "rule.yaml"
    path.write_bytes(data)
    with pytest.raises(RuleError) as caught:
        load_rule(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_rule_file_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + RULE_FILE.read_bytes())
    assert load_rule(path).name == load_rule(RULE_FILE).name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: " + "[" * 100_000 + "]" * 100_000, "is nested too deeply"),
        ("".join(" " * i + "k:\n" for i in range(1100)), "is nested too deeply"),
        ("a: " + "x" * (2 << 20), "is larger than 1 MiB"),
    ],
)
def test_deep_or_huge_yaml_is_one_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError, match=message):
        load_rule(path)


def test_examples_that_expand_to_too_many_rows_are_refused(tmp_path: Path) -> None:
    data = _base()
    row = dict(data["examples"][0]["rows"][0])
    row.pop("each", None)
    row["sPort"], row["repeat"] = 80, 3000
    data["examples"][0]["rows"] = [row] * 40
    with pytest.raises(RuleError, match=r"field 'examples\[0\]\.rows': expands to more than"):
        load_rule(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("each", "message"),
    [
        ("1-100000000000", r"each': stands for 100000000000 rows"),  # counted, never built
        ("1-" + "9" * 5000, r"each\.sPort': must be a non-empty list"),  # int() refuses 4,300 digits
        ("\u0661-\u0663", r"each\.sPort': must be a non-empty list"),  # int() reads Arabic digits; a range is ASCII
    ],
)
def test_an_each_range_that_cannot_be_expanded_is_one_error(tmp_path: Path, each: str, message: str) -> None:
    data = _base()
    row = dict(data["examples"][0]["rows"][0])
    row["each"] = {"sPort": each}
    data["examples"][0]["rows"] = [row]
    with pytest.raises(RuleError, match=message):
        load_rule(_write(tmp_path, data))


def _rule_error(path: Path) -> str | None:
    """None when the file loads, else the RuleError's text; any other exception fails the test."""
    try:
        load_rule(path)
    except RuleError as exc:
        return str(exc)
    return None


WRONG_VALUES: list[Any] = [None, True, 12, 1.5, "text", "", [], ["x"], [None], [[1]], {}, {"a": 1}, [{"a": None}], "9" * 400]


def _fields_and_nested(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every top-level field, and every key of the first entity mapping and of the first example."""
    paths: list[tuple[str, ...]] = [(key,) for key in data]
    paths += [("entityMappings", "0", key) for key in data["entityMappings"][0]]
    paths += [("entityMappings", "0", "fieldMappings", "0", key) for key in data["entityMappings"][0]["fieldMappings"][0]]
    paths += [("examples", "0", key) for key in data["examples"][0]]
    paths += [("examples", "0", "window", key) for key in data["examples"][0]["window"]]
    paths += [("examples", "0", "rows", "0", key) for key in data["examples"][0]["rows"][0]]
    paths += [("parameters", key) for key in data["parameters"]]
    paths += [("requiredDataConnectors", "0", key) for key in data["requiredDataConnectors"][0]]
    return paths


def _set(data: Any, path: tuple[str, ...], value: Any) -> None:
    for step in path[:-1]:
        data = data[int(step)] if isinstance(data, list) else data[step]
    if isinstance(data, list):
        data[int(path[-1])] = value
    else:
        data[path[-1]] = value


@pytest.mark.parametrize("path", _fields_and_nested(_base()), ids=".".join)
def test_a_wrong_type_anywhere_is_a_rule_error_with_file_and_line(tmp_path: Path, path: tuple[str, ...]) -> None:
    for value in WRONG_VALUES:
        data = _base()
        _set(data, path, value)
        file = _write(tmp_path, data)
        error = _rule_error(file)
        if error is not None:
            assert re.match(rf"{re.escape(str(file))}:\d+: ", error), (path, value, error)
            assert "\n" not in error and len(error) < 600, (path, value, error[:300])


@pytest.mark.parametrize("spec", ["r" * 5000, "rules\x00", "\udcff", "/proc/1/mem"])
def test_a_rules_spec_that_is_no_path_is_one_error(spec: str) -> None:
    with pytest.raises(RuleError):
        load_rules(spec)
