"""Read Bicep files without a Bicep compiler: syntax errors through tree-sitter-bicep, structure through
pycep-parser, plus `render`, which turns pycep's expression trees back into compact Bicep-like text so
that tests can compare scopes, names and conditions as strings (`keyVault::webhookSecret.id`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


@dataclass(frozen=True)
class SyntaxProblem:
    """An ERROR or MISSING node of the tree-sitter parse, 1-based line and column."""

    line: int
    column: int
    kind: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.kind} {self.text!r}"


@functools.cache
def _tree_sitter_parser() -> Any:
    import tree_sitter_bicep
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_bicep.language()))


def syntax_problems(source: bytes) -> list[SyntaxProblem]:
    """Every ERROR and MISSING node tree-sitter-bicep finds in `source` (empty: it parses cleanly)."""
    tree = _tree_sitter_parser().parse(source)
    problems: list[SyntaxProblem] = []
    pending = [tree.root_node]
    while pending:
        node = pending.pop()
        if node.is_error or node.is_missing:
            row, column = node.start_point
            kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
            text = source[node.start_byte : node.end_byte].decode(errors="replace")[:60]
            problems.append(SyntaxProblem(row + 1, column + 1, kind, text))
        if node.has_error:
            pending.extend(node.children)
    return sorted(problems, key=lambda p: (p.line, p.column))


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    """The pycep-parser model of one .bicep file (parameters, variables, resources, modules, outputs)."""
    from pycep import BicepParser

    return dict(BicepParser().parse(text=path.read_text(encoding="utf-8")))


def resource_body(resource: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(condition of `= if (...)` rendered, or None; the resource's body) of a pycep resource or module."""
    config: dict[str, Any] = resource["config"]
    if "condition" in config and "config" in config:
        return render(config["condition"]), config["config"]
    return None, config


_BINARY_OPERATORS = {
    "equals": "==",
    "not_equals": "!=",
    "and": "&&",
    "or": "||",
    "greater_than": ">",
    "less_than": "<",
    "minus": "-",
    "add": "+",
    "coalesce": "??",
}


def render(expr: Any) -> str:
    """Compact Bicep-like text of a pycep expression: `a.b`, `a::b`, `f(x, y)`, `c ? t : f`, `!x`."""
    if expr is None:
        return "null"
    if isinstance(expr, bool):
        return "true" if expr else "false"
    if isinstance(expr, int | float | str):
        return str(expr)
    if isinstance(expr, list):
        return "[" + ", ".join(render(item) for item in expr) + "]"
    if isinstance(expr, dict) and set(expr) == {"function"}:
        function = expr["function"]
        arguments = [render(v) for v in (function.get("parameters") or {}).values() if v is not None]
        return f"{function['type']}({', '.join(arguments)})"
    if isinstance(expr, dict) and set(expr) == {"operator"}:
        operator = expr["operator"]
        kind = operator["type"]
        operands = list((operator.get("operands") or {}).values())
        if kind == "property_accessor":
            return f"{render(operands[0])}.{render(operands[1])}"
        if kind == "nested_resource_accessor":
            return f"{render(operands[0])}::{render(operands[1])}"
        if kind == "index_accessor":
            return f"{render(operands[0])}[{render(operands[1])}]"
        if kind == "conditional":
            return f"{render(operands[0])} ? {render(operands[1])} : {render(operands[2])}"
        if kind == "not":
            return f"!{render(operands[0])}"
        if kind in _BINARY_OPERATORS and len(operands) == 2:
            return f"{render(operands[0])} {_BINARY_OPERATORS[kind]} {render(operands[1])}"
        return f"{kind}({', '.join(render(o) for o in operands)})"
    if isinstance(expr, dict):
        return "{" + ", ".join(f"{key}: {render(value)}" for key, value in expr.items()) + "}"
    raise TypeError(f"unexpected pycep node {expr!r}")


def bicep_files() -> list[Path]:
    """Every .bicep file under infra/, sorted."""
    return sorted(INFRA.rglob("*.bicep"))
