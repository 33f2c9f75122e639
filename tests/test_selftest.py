"""Self-tests: the suite judged against programs whose verdict we know.

The reference and the good C pair must pass with no failure; each legal variant
passes; each mutant fails at exactly its clause (warn for a SHOULD clause) and at
no other clause.  These run the real `sockconf check`, as a user would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.clauses import applicable
from tests.helpers import hello_manifest, sockconf

# Clauses of the hello profile that a full run here (root, strace, private
# namespace) must actually judge: everything but the OPT clauses of options the
# target does not declare and the ones no check implements yet.
JUDGED = [c.id for c in applicable("hello") if not c.option]

FIXTURES = hello_manifest()


def _judged_everything(verdicts: dict[str, str], report: dict[str, Any]) -> list[str]:
    """Hello clauses that were not judged (skipped) — with their reasons."""
    out = []
    for c in report["clauses"]:
        if c["id"] in JUDGED and verdicts[c["id"]] in ("skip", "not-testable"):
            reasons = {t.get("message", "") for t in c["tests"]} or {c.get("reason", "")}
            out.append(f"{c['id']}: {'; '.join(sorted(reasons))}")
    return out


def _bad(verdicts: dict[str, str], report: dict[str, Any]) -> list[str]:
    out = []
    for c in report["clauses"]:
        if c["verdict"] in ("fail", "warn", "not-testable"):
            msgs = [t.get("message", "") for t in c["tests"] if t["outcome"] != "passed"]
            out.append(f"{c['id']} {c['verdict']}: {msgs[:2]}")
    return out


def test_reference_passes(tmp_path: Path) -> None:
    res = sockconf("check", tmp_path=tmp_path)
    assert res.rc == 0, res.explain()
    assert not _bad(res.verdicts, res.report or {}), _bad(res.verdicts, res.report or {})
    assert not _judged_everything(res.verdicts, res.report or {}), res.explain()


@pytest.mark.parametrize("fx", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_fixture_verdicts(fx: dict[str, Any], hello_build: Path, tmp_path: Path) -> None:
    target = hello_build / fx["target"]
    res = sockconf("check", str(target), tmp_path=tmp_path)
    verdicts = res.verdicts
    report = res.report or {}
    if fx["kind"] in ("good", "legal"):
        assert not _bad(verdicts, report), f"false alarm on {fx['name']}: {_bad(verdicts, report)}"
        assert res.rc == 0, res.explain()
        assert not _judged_everything(verdicts, report), _judged_everything(verdicts, report)
        return
    clause_id, level = fx["breaks"], fx["level"]
    expected = "fail" if level == "MUST" else "warn"
    assert verdicts[clause_id] == expected, (
        f"{fx['name']} should {expected} {clause_id}, got {verdicts[clause_id]}\n{res.explain()}")
    others = [b for b in _bad(verdicts, report) if not b.startswith(clause_id + " ")]
    assert not others, f"{fx['name']} breaks only {clause_id}, but also: {others}"
    assert res.rc == (1 if level == "MUST" else 0), res.explain()
    if level == "SHOULD":
        strict = sockconf("check", str(target), "--strict", "--clause", clause_id,
                          tmp_path=tmp_path)
        assert strict.rc == 1, strict.explain()
        assert strict.verdicts[clause_id] == "warn"
