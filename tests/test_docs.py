"""The docs stay true: commands, options, paths, settings, summary keys and figures they name exist.

What is checked, in README.md and docs/*.md:
- every command in a fenced shell block: `python -m detector ...` parses with the real argparse parser,
  `make X` names a Makefile target, `python <file>` and repository paths name files that exist;
- every DETECTOR_* name is a setting of detector/config.py SETTINGS, with its real default in the README;
- every summary key the docs name exists in RunSummary.to_json();
- no absolute path of a machine appears anywhere in the repository's text files;
- every figure in the README's Performance section appears in docs/performance.md or docs/loganalytics.md.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from detector.cli import build_parser
from detector.config import SETTING_NAMES, SETTINGS, Setting
from detector.runner import RunSummary, evaluate_window, run
from detector.sources import open_source
from tests.helpers import DAY, FILES, ROOT, RULE

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {
    p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
SHELL_FENCES = ("sh", "bash", "shell")
PROGRAMS_IN_PLAIN_FENCES = ("python", "make")  # untagged blocks that are commands, not synopses
REPO_DIRS = ("tests/", "docs/", "benchmarks/", "rules/", "infra/", "detector/")


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block, indented ones included."""
    blocks: list[tuple[str, list[str]]] = []
    language, lines, inside = "", list[str](), False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            if inside:
                blocks.append((language, lines))
                inside, lines = False, []
            else:
                inside, language = True, stripped[3:].strip()
            continue
        if inside:
            lines.append(line)
    return blocks


def commands(text: str) -> list[str]:
    """Shell commands of the shell blocks (continuations joined, comments dropped), and of untagged command blocks."""
    found = []
    for language, lines in fenced_blocks(text):
        joined = "\n".join(lines).replace("\\\n", " ")
        for raw in joined.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            first = line.split()[0]
            if language in SHELL_FENCES or (language == "" and first in PROGRAMS_IN_PLAIN_FENCES and "[--" not in line):
                found.append(line)
    return found


ALL_COMMANDS = [(name, command) for name, text in DOCS.items() for command in commands(text)]


def _words(command: str) -> list[str]:
    # Placeholders such as <workspace id> stand for one word.
    return shlex.split(re.sub(r"<[^>]*>", "PLACEHOLDER", command.rstrip("&").strip()))


def test_the_docs_have_commands_to_check() -> None:
    assert sum(1 for _, c in ALL_COMMANDS if c.startswith("python -m detector")) >= 4
    assert any(c.startswith("make ") for _, c in ALL_COMMANDS)


@pytest.mark.parametrize(("doc", "command"), ALL_COMMANDS, ids=[f"{d}:{c[:50]}" for d, c in ALL_COMMANDS])
def test_every_documented_command_exists(doc: str, command: str) -> None:
    words = _words(command)
    for index, word in enumerate(words):
        if word == "python" and words[index + 1 : index + 3] == ["-m", "detector"]:
            arguments = words[index + 3 :]
            try:
                build_parser().parse_args(arguments)
            except SystemExit as exc:
                if exc.code != 0:  # --help and --version exit 0
                    pytest.fail(f"{doc}: `{command}` is not accepted by the CLI")
        elif word == "python" and index + 1 < len(words) and words[index + 1].endswith(".py"):
            assert (ROOT / words[index + 1]).is_file(), f"{doc}: {words[index + 1]} does not exist"
        elif word == "make":
            targets = re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
            for target in [w for w in words[index + 1 :] if not w.startswith("-") and "=" not in w][:1]:
                assert target in targets, f"{doc}: make {target} is not a Makefile target"
        for part in re.split(r"[=:]", word):
            if part.startswith(REPO_DIRS) and "PLACEHOLDER" not in part and not part.startswith(("docs/simulation", "out/")):
                path = part.rstrip(",")
                created = "--html" in words and words[words.index("--html") + 1] == word
                assert created or (ROOT / path).exists() or path.startswith("benchmarks/data"), f"{doc}: {path} does not exist"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_in_the_readme_with_its_default(setting: Setting) -> None:
    line = next((row for row in README.splitlines() if row.startswith(f"| `{setting.name}` |")), None)
    assert line is not None, f"{setting.name} is not in the README's settings table"
    if setting.default:
        assert line.split("|")[2].strip() == f"`{setting.default}`"


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_setting_named_in_the_docs_exists(doc: str) -> None:
    named = set(re.findall(r"\bDETECTOR_[A-Z][A-Z0-9_]*[A-Z0-9]\b", DOCS[doc]))
    assert named - SETTING_NAMES == set()


def summary_keys() -> set[str]:
    """Every key a run summary can hold: top level, per window, and each source's read figures."""
    from detector.sources.loganalytics import QueryStats

    summary: RunSummary = run([(RULE, DAY)], open_source(f"file:{FILES / 'w3ciislog.jsonl'}"), [])
    data = summary.to_json()
    keys = set(data) | {k for w in data["windows"] for k in w} | set(QueryStats().to_json())
    keys |= set(evaluate_window(RULE, open_source(f"file:{FILES / 'w3ciislog.jsonl'}"), DAY).source_stats)
    return keys


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_summary_key_named_in_the_docs_exists(doc: str) -> None:
    keys = summary_keys()
    text = DOCS[doc]
    named = set(re.findall(r"\bs\.([A-Za-z]+)", text))  # the Application Insights queries: s.findings, s.lagSeconds
    for line in text.splitlines():
        if "summary" in line:
            named |= set(re.findall(r"`([a-z]+[A-Z][A-Za-z]*)`", line))  # `rowsEvaluated` in prose about it
    # Names of the health alerts' Bicep parameters sit in the same prose; they exist where they are declared.
    parameters = set(re.findall(r"^param (\w+)", (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8"), re.M))
    assert named - keys - parameters == set(), f"{doc} names summary keys that do not exist"


def test_no_absolute_path_of_a_machine() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    machine = re.compile(r"(?<![\w.])(/work/|/home/|/Users/|/root/|[A-Z]:\\\\Users\\\\)")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".toml", ".json", ".yaml", ".yml", ".bicep", ".txt", ""} or not path.is_file():
            continue
        if name == "tests/test_docs.py":
            continue  # this file names the patterns it looks for
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if machine.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert offenders == []


def test_every_readme_performance_figure_is_in_the_performance_docs() -> None:
    section = README.split("## Performance", 1)[1].split("\n## ", 1)[0]
    figures = re.findall(r"\d[\d,]*(?:\.\d+)?(?: ?(?:s|MB|KB|%|×|x))?", section)
    measured = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8") + (ROOT / "docs" / "loganalytics.md").read_text(
        encoding="utf-8"
    )
    measured = measured.replace("x ", "× ").replace("x,", "×,").replace("x)", "×)")
    number = re.compile(r"\d[\d,]*(?:\.\d+)?")
    missing = [
        f
        for f in figures
        if (digits := number.match(f)) is not None
        and len(digits.group()) > 1
        and f.replace("×", "x") not in measured
        and f not in measured
    ]
    assert missing == [], "README figures not in docs/performance.md or docs/loganalytics.md"


def test_readme_names_the_test_command_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^\s*make test\b", ci, re.MULTILINE)
    assert "make test" in [c.split("#")[0].strip() for c in commands(README)]
