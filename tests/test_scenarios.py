"""docs/scenarios.md lists every scenario a test cites.

A citation is ``docs/scenarios.md: name`` (or ``name, name, ...``), a name being a heading of
that document (a section, ``## name``, or a scenario, ``### name``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/scenarios\.md: ([a-z0-9-]+(?:,\s+[a-z0-9-]+)*)")


def headings(text: str) -> set[str]:
    return set(re.findall(r"^#{2,3} ([a-z0-9-]+)\s*$", text, flags=re.MULTILINE))


def source_files() -> list[Path]:
    """Every Python file under tests/ but this one (whose docstring shows the form)."""
    return [p for p in sorted((ROOT / "tests").glob("*.py")) if p.name != Path(__file__).name]


def citations(text: str) -> set[str]:
    return {name for group in CITATION.findall(text) for name in re.split(r",\s+", group)}


def test_every_cited_scenario_is_listed() -> None:
    listed = headings((ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8"))
    cited: dict[str, set[str]] = {}
    for path in source_files():
        for name in citations(path.read_text(encoding="utf-8")):
            cited.setdefault(name, set()).add(path.name)
    assert cited, "no test cites a scenario"
    missing = {name: sorted(files) for name, files in cited.items() if name not in listed}
    assert not missing, f"cited but not in docs/scenarios.md: {missing}"


def test_no_test_cites_the_old_catalogue() -> None:
    old = [p.name for p in source_files() if "catalogue §" in p.read_text(encoding="utf-8")]
    assert not old, f"cite docs/scenarios.md instead: {old}"
