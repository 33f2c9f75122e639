"""fixtures/polyglot/fixtures.toml is well formed (no process runs here): each entry's
target file loads, and its `expect` names clauses of that profile with verdicts their
level can have, so a typo cannot silently excuse a false alarm."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conformance.clauses import applicable
from conformance.target import load_file
from tests.helpers import FIXTURES, polyglot_manifest

POLYGLOT = FIXTURES / "polyglot"
ENTRIES = polyglot_manifest()
MAKE_GOALS = set(re.findall(r"^([a-z][a-z ]*):", (POLYGLOT / "Makefile").read_text(), re.M))


def test_manifest_lists_fixtures() -> None:
    assert ENTRIES
    assert len({fx["name"] for fx in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("fx", ENTRIES, ids=[fx["name"] for fx in ENTRIES])
def test_entry(fx: dict[str, Any]) -> None:
    target = load_file(POLYGLOT / fx["target"])
    assert target.profile == fx["profile"]
    assert fx["kind"] == "legal"
    assert fx["needs"] and all(isinstance(n, str) and n for n in fx["needs"])
    goals = {g for line in MAKE_GOALS for g in line.split()}
    assert fx["build"] == "" or fx["build"] in goals, f"no Makefile goal {fx['build']!r}"
    levels = {c.id: c.level for c in applicable(fx["profile"])}
    for clause_id, verdicts in fx.get("expect", {}).items():
        assert clause_id in levels, f"{clause_id} is not a {fx['profile']} clause"
        allowed = {"skip", "not-testable"} | ({"fail"} if levels[clause_id] == "MUST" else {"warn"})
        # A list: the runtime's behaviour varies run to run; one of them may be a pass.
        choices = [verdicts] if isinstance(verdicts, str) else verdicts
        assert choices and all(isinstance(v, str) for v in choices)
        if len(choices) > 1:
            allowed.add("pass")
        for verdict in choices:
            assert verdict in allowed, f"{clause_id} ({levels[clause_id]}) cannot be {verdict!r}"
