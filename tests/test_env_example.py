"""The shipped docs keep up with the code: every setting is in .env.example, the quick start in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aiguardian.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    # A setting counts when a line assigns it, commented out or not: `# AIG_PORT=8080` or `AIG_PORT=8080`.
    return set(re.findall(r"^#?\s*(AIG_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_env_example(field: str) -> None:
    assert f"AIG_{field.upper()}" in _env_example_names(), (
        f"AIG_{field.upper()} is missing from .env.example: add it with its default and one line of meaning"
    )


def test_env_example_names_only_real_settings() -> None:
    known = {f"AIG_{field.upper()}" for field in Settings.model_fields}
    assert _env_example_names() - known == set()


def test_readme_quick_start_names_make_run_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
