"""Rule files: parsed and validated once at the edge into typed Rule objects."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from detector.config import decode_utf8
from detector.errors import InputError, RuleError, shown
from detector.examples import ExampleRowError, expand_row
from detector.kql import parse_datetime, parse_timespan
from detector.logic import RuleLogic, logic_class
from detector.models import Row, Window
from detector.w3ciislog import coerce_row

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
# libyaml's parser when PyYAML was built with it (the wheels are): the same safe constructor and the
# same errors with line marks, ~10x faster than the pure-Python parser (~0.1 s saved on every run).
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$")
SEVERITIES = ("Informational", "Low", "Medium", "High")
TACTICS = (
    "Reconnaissance",
    "ResourceDevelopment",
    "InitialAccess",
    "Execution",
    "Persistence",
    "PrivilegeEscalation",
    "DefenseEvasion",
    "CredentialAccess",
    "Discovery",
    "LateralMovement",
    "Collection",
    "CommandAndControl",
    "Exfiltration",
    "Impact",
    "PreAttack",
    "ImpairProcessControl",
    "InhibitResponseFunction",
)
# The fields of Azure-Sentinel's analytic rule templates (its template schema validator), and the
# detector's own. Any other top-level key is a typo (`severty:`) that would otherwise be ignored silently.
SENTINEL_FIELDS = frozenset(
    {
        "id", "name", "description", "severity", "kind", "status", "requiredDataConnectors", "queryFrequency",
        "queryPeriod", "triggerOperator", "triggerThreshold", "tactics", "relevantTechniques", "subTechniques",
        "query", "entityMappings", "sentinelEntitiesMappings", "customDetails", "alertDetailsOverride",
        "eventGroupingSettings", "incidentConfiguration", "suppressionEnabled", "suppressionDuration",
        "version", "metadata", "tags",
    }
)  # fmt: skip
DETECTOR_FIELDS = frozenset({"parameters", "examples", "additionalEntityMappings", "logicModule"})
KNOWN_FIELDS = SENTINEL_FIELDS | DETECTOR_FIELDS
MAX_RULE_FILE_BYTES = 1 << 20  # the bundled rule is 6 KB; Sentinel's query alone is at most 10,000 characters
MAX_YAML_NODES = 200_000
MAX_EXAMPLE_ROWS = 100_000  # after `repeat`/`each` expansion: examples are read on every run
TRIGGER_OPERATORS = {"gt": int.__gt__, "lt": int.__lt__, "eq": int.__eq__, "ne": int.__ne__}
ENTITY_TYPES = ("IP", "Host", "Account", "URL", "DNS", "FileHash", "File", "Process", "AzureResource", "CloudApplication")


@dataclass(frozen=True)
class EntityMapping:
    """Sentinel entityMappings item: entity type and (identifier, column) pairs."""

    entity_type: str
    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RuleExample:
    """An inline example: rows and a window, whether the rule must fire, and expected result columns."""

    name: str
    fires: bool
    window: Window
    rows: tuple[Row, ...]
    expected: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Rule:
    """A Sentinel scheduled rule and the parameters of its Python logic."""

    path: str
    id: str
    name: str
    description: str
    severity: str
    kind: str
    query_frequency: timedelta
    query_period: timedelta
    trigger_operator: str
    trigger_threshold: int
    tactics: tuple[str, ...]
    techniques: tuple[str, ...]
    entity_mappings: tuple[EntityMapping, ...]
    required_data_connectors: tuple[Mapping[str, Any], ...]
    version: str
    query: str
    parameters: Mapping[str, Any]
    logic: RuleLogic
    examples: tuple[RuleExample, ...]

    def triggers(self, result_count: int) -> bool:
        """Sentinel's alert threshold: compare the number of result rows with triggerThreshold."""
        return TRIGGER_OPERATORS[self.trigger_operator](result_count, self.trigger_threshold)


class _Fields:
    """Reads typed fields from a rule mapping, raising RuleError with file, line and field name."""

    def __init__(self, path: str, data: Mapping[str, Any], lines: Mapping[str, int]) -> None:
        self.path, self.data, self.lines = path, data, lines

    def error(self, field: str, problem: str, at: str = "") -> RuleError:
        """An error at the line of `at` or `field` (a path like examples[0].rows[2].sIP), or of its nearest parent."""
        line, path = None, at or field
        while path and line is None:
            line = self.lines.get(path)
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        return RuleError(f"{self.path}:{line}" if line else self.path, field, problem)

    def get(self, field: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        if field not in self.data:
            if required:
                raise self.error(field, "is missing")
            return None
        value = self.data[field]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(field, f"must be a {names}, got {type(value).__name__} {shown(repr(value))}")
        return value

    def text(self, field: str, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self.get(field, (str, int, float))
        value = str(value).strip()
        if not value:
            raise self.error(field, "must not be empty")
        if pattern and not pattern.match(value):
            raise self.error(field, f"'{shown(value)}' has the wrong form (expected {pattern.pattern})")
        if choices and value not in choices:
            raise self.error(field, f"'{shown(value)}' is not one of {', '.join(choices)}")
        return value

    def timespan(self, field: str) -> timedelta:
        try:
            span = parse_timespan(self.text(field))
        except ValueError as exc:
            raise self.error(field, str(exc)) from None
        if not timedelta(minutes=5) <= span <= timedelta(days=14):
            raise self.error(field, "must be between 5m and 14d, as Sentinel requires")
        return span

    def text_list(self, field: str, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        items = self.get(field, list)
        if not items:
            raise self.error(field, "must list at least one value")
        for i, item in enumerate(items):
            if not isinstance(item, str) or (pattern and not pattern.match(item)) or (choices and item not in choices):
                allowed = f"one of {', '.join(choices)}" if choices else f"matching {pattern.pattern if pattern else 'text'}"
                raise self.error(field, f"value {shown(repr(item))} is not {allowed}", at=f"{field}[{i}]")
        return tuple(items)


def _node_lines(root: yaml.Node, where: str) -> dict[str, int]:
    """Line (1-based) of every key and item, by path (`examples[0].rows[2].sIP`).

    A key given twice in any mapping is an error. Iterative, and each node once: an alias is the node
    it refers to, so a "billion laughs" file costs no more than its own text.
    """
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if len(visited) > MAX_YAML_NODES:
            raise RuleError(where, "", f"holds more than {MAX_YAML_NODES:,} YAML values; a rule file is small")
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                name = key.value if isinstance(key, yaml.ScalarNode) else f"<{key.id} key>"
                sub = f"{path}.{name}" if path else name
                if name in first and name != "<<":
                    raise RuleError(f"{where}:{line}", sub, f"appears twice (first on line {first[name]}); keep one")
                first[name] = line
                lines.setdefault(sub, line)
                stack.append((value, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines.setdefault(sub, item.start_mark.line + 1)
                stack.append((item, sub))
    return lines


def _read_rule_text(path: Path, where: str) -> str:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise RuleError(where, "", "is not a regular file (a folder, FIFO or device); name a .yaml rule file")
        with path.open("rb") as handle:
            data = handle.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(where, "", f"cannot read rule file ({exc.strerror})") from None
    except ValueError as exc:  # a NUL in the path
        raise RuleError(where, "", f"cannot read rule file ({exc})") from None
    if len(data) > MAX_RULE_FILE_BYTES:
        raise RuleError(where, "", "is larger than 1 MiB; a rule file is a few kilobytes")
    try:
        return decode_utf8(data, "the rule file")
    except ValueError as exc:
        raise RuleError(where, "", str(exc)) from None


def _parse(text: str, where: str) -> tuple[dict[Any, Any], dict[str, int]]:
    """The rule mapping and the line of every path in it; any YAML problem is one RuleError."""
    too_deep = "is nested too deeply (more than 1,000 levels); a rule file is a mapping of a few levels"
    try:
        node = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        problem = str(getattr(exc, "problem", None) or exc)
        if "maximum nesting depth" in problem:
            raise RuleError(at, "", too_deep) from None
        raise RuleError(at, "", f"is not valid YAML: {shown(problem, 200)}") from None
    except RecursionError:  # the pure-Python parser, when libyaml is missing
        raise RuleError(where, "", too_deep) from None
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(where, "", "must be a YAML mapping of Sentinel rule fields")
    lines = _node_lines(node, where)
    loader = _YAML_LOADER("")
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise RuleError(at, "", f"is not valid YAML: {shown(str(getattr(exc, 'problem', None) or exc), 200)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an unquoted timestamp that is no date (2026-02-30)
        raise RuleError(where, "", f"holds a value YAML cannot read ({shown(str(exc))}); quote it") from None
    except RecursionError:
        raise RuleError(where, "", too_deep) from None
    finally:
        loader.dispose()
    return data, lines


def _check_field_names(data: Mapping[Any, Any], lines: Mapping[str, int], where: str) -> None:
    by_lower = {name.lower(): name for name in KNOWN_FIELDS}
    for key in data:
        if isinstance(key, str) and key in KNOWN_FIELDS:
            continue
        name = str(key)
        line = lines.get(name)
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.7)
        hint = f"did you mean '{by_lower[close[0]]}'?" if close else "see the README's Rules section for the fields"
        raise RuleError(f"{where}:{line}" if line else where, shown(name), f"is not a rule field; {hint}")


def load_rule(path: str | Path) -> Rule:
    """Load and validate one rule file; any problem raises RuleError naming the file, line and field."""
    path = Path(path)
    where = shown(str(path), 300)
    text = _read_rule_text(path, where)
    data, lines = _parse(text, where)
    _check_field_names(data, lines, where)
    f = _Fields(where, data, lines)

    rule_id = f.text("id", _GUID).lower()
    if "logicModule" in data:
        _import_logic_module(f, path)
    cls = logic_class(rule_id)
    if cls is None:
        raise f.error(
            "id",
            f"no Python logic is registered for rule {rule_id}; add a module to detector/logic/ "
            "or name one next to the rule file with logicModule",
        )
    params = f.get("parameters", dict)
    try:
        logic = cls.from_parameters(params)
    except ValueError as exc:
        raise f.error("parameters", str(exc)) from None

    frequency, period = f.timespan("queryFrequency"), f.timespan("queryPeriod")
    if frequency > period:
        raise f.error("queryFrequency", "must not be longer than queryPeriod")
    if logic.whole_window:
        # Without a bin, windows are whole queryFrequency steps (detector.windows).
        logic.time_bin = frequency
    threshold = f.get("triggerThreshold", int)
    if not 0 <= threshold <= 10000:
        raise f.error("triggerThreshold", "must be between 0 and 10000")
    connectors = f.get("requiredDataConnectors", list)
    for i, connector in enumerate(connectors):
        if not isinstance(connector, dict) or not isinstance(connector.get("dataTypes"), list):
            raise f.error(f"requiredDataConnectors[{i}]", "needs connectorId and a dataTypes list")
    # Older templates (19e01883 at the pinned commit) carry neither kind nor version: every rule under
    # Detections/ without a kind is a scheduled rule, and a missing version stays empty, never invented.
    kind = f.text("kind", choices=("Scheduled", "NRT")) if "kind" in data else "Scheduled"
    query = f.text("query")
    if len(query) > 10000:
        raise f.error("query", "is longer than Sentinel's 10,000 characters")

    mappings = _entity_mappings(f, "entityMappings", logic)
    # Ours, not Sentinel's: entities the detector adds (Host from Computer) beyond the rule's own mapping.
    mappings += _entity_mappings(f, "additionalEntityMappings", logic, required=False)
    return Rule(
        path=where,
        id=rule_id,
        name=f.text("name"),
        description=f.text("description"),
        severity=f.text("severity", choices=SEVERITIES),
        kind=kind,
        query_frequency=frequency,
        query_period=period,
        trigger_operator=f.text("triggerOperator", choices=tuple(TRIGGER_OPERATORS)),
        trigger_threshold=threshold,
        tactics=f.text_list("tactics", choices=TACTICS),
        techniques=f.text_list("relevantTechniques", _TECHNIQUE),
        entity_mappings=mappings,
        required_data_connectors=tuple(connectors),
        version=f.text("version", _SEMVER) if "version" in data else "",
        query=query,
        parameters=params,
        logic=logic,
        examples=_examples(f, logic),
    )


_PLUGINS: dict[Path, ModuleType] = {}


def _import_logic_module(f: _Fields, rule_file: Path) -> None:
    """Import the logic module a rule file names (`logicModule: my_rule.py`, next to the rule file).

    The module registers its RuleLogic with @register, as the built-in ones do. It must sit in the rule
    file's own folder, so a rule folder carries its logic with it. Each file is imported once per
    process, so loading the same rule again finds the class already registered.
    """
    name = f.text("logicModule")
    module_path = (rule_file.parent / name).resolve()
    if Path(name).name != name or module_path.suffix != ".py":
        raise f.error("logicModule", f"'{name}' must be the name of a .py file in the rule file's folder")
    if module_path in _PLUGINS:
        return
    if not module_path.is_file():
        raise f.error("logicModule", f"{module_path} does not exist")
    digest = hashlib.sha256(str(module_path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"detector_rule_logic_{module_path.stem}_{digest}", module_path)
    if spec is None or spec.loader is None:
        raise f.error("logicModule", f"cannot import {module_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any failure of the module becomes one clear rule error
        del sys.modules[spec.name]
        raise f.error("logicModule", f"importing {module_path} failed: {type(exc).__name__}: {exc}") from None
    _PLUGINS[module_path] = module


def _entity_mappings(f: _Fields, field: str, logic: RuleLogic, required: bool = True) -> tuple[EntityMapping, ...]:
    items = f.get(field, list, required=required)
    if items is None:
        return ()
    if required and not 1 <= len(items) <= 10:
        raise f.error(field, "must hold 1 to 10 mappings")
    mappings = []
    for i, item in enumerate(items):
        name = f"{field}[{i}]"
        if not isinstance(item, dict) or item.get("entityType") not in ENTITY_TYPES:
            raise f.error(name, f"needs entityType, one of {', '.join(ENTITY_TYPES)}")
        pairs = item.get("fieldMappings")
        if not isinstance(pairs, list) or not 1 <= len(pairs) <= 3:
            raise f.error(name, "needs 1 to 3 fieldMappings")
        fields = []
        for pair in pairs:
            if (
                not isinstance(pair, dict)
                or not isinstance(pair.get("identifier"), str)
                or not isinstance(pair.get("columnName"), str)
            ):
                raise f.error(name, "each fieldMapping needs identifier and columnName")
            if pair["columnName"] not in logic.output_columns:
                raise f.error(name, f"column {pair['columnName']!r} is not an output column of the rule")
            fields.append((pair["identifier"], pair["columnName"]))
        mappings.append(EntityMapping(item["entityType"], tuple(fields)))
    return tuple(mappings)


def _examples(f: _Fields, logic: RuleLogic) -> tuple[RuleExample, ...]:
    items = f.get("examples", list)
    if not any(isinstance(e, dict) and e.get("fires") is True for e in items) or not any(
        isinstance(e, dict) and e.get("fires") is False for e in items
    ):
        raise f.error("examples", "must hold at least one example that fires and one that does not")
    examples = []
    total_rows = 0
    for i, item in enumerate(items):
        name = f"examples[{i}]"
        if not isinstance(item, dict):
            raise f.error(name, "must be a mapping with name, fires, window and rows")
        for key in ("name", "fires", "window", "rows"):
            if key not in item:
                raise f.error(f"{name}.{key}", "is missing")
        if not isinstance(item["fires"], bool):
            raise f.error(f"{name}.fires", "must be true or false")
        window_data = item["window"]
        try:
            window = Window(parse_datetime(str(window_data["start"])), parse_datetime(str(window_data["end"])))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise f.error(f"{name}.window", f"needs start and end ISO datetimes, start before end ({shown(str(exc))})") from None
        rows: list[Row] = []
        if not isinstance(item["rows"], list):
            raise f.error(f"{name}.rows", "must be a list of W3CIISLog rows")
        for j, raw in enumerate(item["rows"]):
            where = f"{f.path}: {name}.rows[{j}]"
            if not isinstance(raw, dict):
                raise f.error(f"{name}.rows[{j}]", "must be a mapping of W3CIISLog columns")
            try:
                expanded_rows = expand_row(raw)
            except ExampleRowError as exc:
                raise f.error(f"{name}.rows[{j}].{exc.key}", str(exc)) from None
            for expanded in expanded_rows:
                if (total_rows := total_rows + 1) > MAX_EXAMPLE_ROWS:
                    raise f.error(f"{name}.rows", f"expands to more than {MAX_EXAMPLE_ROWS:,} rows; keep examples small")
                try:
                    rows.append(coerce_row(expanded, logic.columns, logic.required_columns, where))
                except InputError as exc:
                    raise f.error(f"{name}.rows[{j}]", exc.problem) from None
        expected = item.get("expect", [])
        if not isinstance(expected, list) or not all(isinstance(e, dict) for e in expected):
            raise f.error(f"{name}.expect", "must be a list of mappings of result columns")
        if expected and not item["fires"]:
            raise f.error(f"{name}.expect", "an example that does not fire cannot expect results")
        examples.append(RuleExample(str(item["name"]), item["fires"], window, tuple(rows), tuple(expected)))
    return tuple(examples)


def load_rules(spec: str | Path) -> list[Rule]:
    """Rules from a file, a folder of *.yaml files, a bundled rule's id, or a comma-separated list of those.

    A rule id is looked up in the bundled rules/ folder; DETECTOR_RULES=<id>,<id> selects any subset.
    """
    text = str(spec)
    if "," in text:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise RuleError(text, "", "has an empty item; separate rule files, folders or ids with single commas")
        return _unique([rule for part in parts for rule in load_rules(part)])
    path = Path(text)
    shown_spec = shown(text, 300)
    try:
        is_dir, exists = path.is_dir(), path.exists()
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if is_dir else []
    except (OSError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or str(exc)
        raise RuleError(shown_spec, "", f"cannot be read as a rule file or folder ({problem})") from None
    if is_dir:
        if not files:
            raise RuleError(shown_spec, "", "folder holds no .yaml rule files")
        rules = [load_rule(p) for p in files]
    elif exists:
        rules = [load_rule(path)]
    elif _GUID.match(text):
        rules = [r for r in load_rules(DEFAULT_RULES_DIR) if r.id == text.lower()]
        if not rules:
            raise RuleError(text, "", f"no rule with this id in {DEFAULT_RULES_DIR}")
    else:
        raise RuleError(shown_spec, "", "is neither a rule file, a folder of rules, nor a rule id")
    return _unique(rules)


def _unique(rules: list[Rule]) -> list[Rule]:
    """The rules, each once; the same id from two different files is an error."""
    seen: dict[str, str] = {}
    unique = []
    for rule in rules:
        if rule.id in seen:
            if Path(seen[rule.id]).resolve() == Path(rule.path).resolve():
                continue  # named twice (by id and by file): one rule
            raise RuleError(rule.path, "id", f"duplicates the id of {seen[rule.id]}")
        seen[rule.id] = rule.path
        unique.append(rule)
    return unique
