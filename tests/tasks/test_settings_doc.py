"""README's table of the settings is generated from their one declaration each (worker/config.py)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from worker.config import Settings, setting_specs
from worker.settings_doc import readme_with_table, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"
REGENERATE = "python -m worker.settings_doc --update-readme README.md"


def test_readme_table_is_generated_from_the_settings() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.partition("## Configuration (environment)\n")[2].partition("\n## ")[0]
    assert settings_table() in section, f"the table is not in README's configuration section: {REGENERATE}"
    assert readme_with_table(text) == text, f"README's settings table is out of date: run `{REGENERATE}`"


def test_every_setting_has_a_variable_and_a_meaning() -> None:
    specs = setting_specs()
    assert list(specs) == [f.name for f in fields(Settings)]
    variables = [spec.env for spec in specs.values()]
    assert len(set(variables)) == len(variables)
    for name, spec in specs.items():
        assert re.fullmatch(r"(VCL|CELERY)_[A-Z0-9_]+", spec.env), name
        assert spec.doc.strip() and "\n" not in spec.doc, name


def test_table_has_one_row_per_setting() -> None:
    rows = settings_table().splitlines()[2:]
    assert [row.split(" | ")[0].strip("| `") for row in rows] == [s.env for s in setting_specs().values()]
