"""The README stays true: every setting the code reads is documented, with its real default."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config import SETTINGS, Setting

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_in_the_readme_with_its_default(setting: Setting) -> None:
    line = next((row for row in README.splitlines() if row.startswith(f"| `{setting.name}` |")), None)
    assert line is not None, f"{setting.name} is not in the README's settings table"
    if setting.default:
        assert f"`{setting.default}`" in line


def test_readme_names_the_test_command_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
    assert "make test" in README
