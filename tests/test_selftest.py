"""Self-tests: the suite judged against programs whose verdict we know.

The references and the good C programs must pass with no failure; each legal
variant passes; each mutant fails at exactly its clause (warn for a SHOULD clause)
and at no other clause.  These run the real `sockconf check`, as a user would.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.clauses import applicable
from conformance.target import BUILTIN_DIR
from tests.helpers import PROFILES, manifest, polyglot_manifest, sockconf

FIXTURES = [fx for p in PROFILES for fx in manifest(p)] + polyglot_manifest()


def _must_judge(profile: str, target_file: Path | None) -> list[str]:
    """Clauses a full run here (root, strace, private namespace) must actually
    judge for this target: all of its profile's, the OPT clauses of the options it
    declares (server or client), and ECHO-4
    only for a target that declares the udp4 transport."""
    if target_file is None:
        target_file = BUILTIN_DIR / f"reference-{profile}.toml"
    doc = tomllib.loads(target_file.read_text())
    transports: list[str] = doc.get("server", {}).get("transports", [])
    declared = {*doc.get("server", {}).get("options", {}), *doc.get("client", {}).get("options", {})}
    out = []
    for c in applicable(profile):
        if c.option and c.option not in declared:
            continue
        if c.id == "OPT-OOBINLINE" and profile != "echo":
            continue  # urgent data is defined for the echo profile only
        if c.id == "ECHO-4" and "udp4" not in transports:
            continue
        out.append(c.id)
    return out


def _unjudged(report: dict[str, Any], must: list[str]) -> list[str]:
    """Clauses that should have been judged but were skipped — with the reasons."""
    out = []
    for c in report["clauses"]:
        if c["id"] in must and c["verdict"] in ("skip", "not-testable"):
            reasons = {t.get("message", "") for t in c["tests"] if t["outcome"] != "passed"}
            out.append(f"{c['id']}: {'; '.join(sorted(reasons)) or c.get('reason', '')}")
    return out


def _choices(expected: dict[str, str | list[str]]) -> dict[str, list[str]]:
    """A manifest's `expect`: clause -> its verdict, or a list of the verdicts a
    runtime gives from run to run (e.g. a fault that lands only sometimes)."""
    return {c: [v] if isinstance(v, str) else list(v) for c, v in expected.items()}


def _bad(report: dict[str, Any], expected: dict[str, str | list[str]] | None = None
         ) -> list[str]:
    """Clauses judged fail/warn/not-testable, except those whose verdict is an
    `expected` one (a runtime limit a polyglot fixture documents)."""
    out = []
    choices = _choices(expected or {})
    for c in report["clauses"]:
        if c["verdict"] in choices.get(c["id"], ()):
            continue
        if c["verdict"] in ("fail", "warn", "not-testable"):
            msgs = [t.get("message", "")[:600] for t in c["tests"] if t["outcome"] != "passed"]
            out.append(f"{c['id']} {c['verdict']}: {msgs[:2]}")
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_reference_passes(profile: str, tmp_path: Path) -> None:
    res = sockconf("check", f"reference-{profile}", "-n", "2", tmp_path=tmp_path)
    report = res.report or {}
    assert res.rc == 0, res.explain()
    assert not _bad(report), _bad(report)
    assert not _unjudged(report, _must_judge(profile, None)), res.explain()


def _fixture_id(fx: dict[str, Any]) -> str:
    return f"{fx.get('family', fx['profile'])}-{fx['name']}"


@pytest.mark.parametrize("fx", FIXTURES, ids=[_fixture_id(f) for f in FIXTURES])
def test_fixture_verdicts(fx: dict[str, Any], fixtures_built: Callable[[str], Path],
                          polyglot_built: Callable[[dict[str, Any]], Path],
                          tmp_path: Path) -> None:
    if fx.get("family") == "polyglot":
        built = polyglot_built(fx)
    else:
        built = fixtures_built(fx["profile"])
    target = built / fx["target"]
    # -n 2: the checks mostly wait on the network, so two workers halve the time.
    res = sockconf("check", str(target), "-n", "2", tmp_path=tmp_path)
    verdicts = res.verdicts
    report = res.report or {}
    if fx["kind"] in ("good", "legal"):
        # expect: documented verdicts of a legal program: a runtime limit, or a
        # clause whose situation it never creates (skip); the others must pass.
        expected = fx.get("expect", {})
        assert not _bad(report, expected), f"false alarm on {fx['name']}: {_bad(report, expected)}"
        choices = _choices(expected)
        seen = {c: verdicts[c] for c in expected}
        assert all(seen[c] in choices[c] for c in choices), (
            f"{fx['name']}: documented runtime limits {expected}, got {seen}")
        must_fail = any(seen[c] == "fail" for c in choices)
        assert res.rc == (1 if must_fail else 0), res.explain()
        must = [c for c in _must_judge(fx["profile"], target) if c not in expected]
        unjudged = _unjudged(report, must)
        assert not unjudged, unjudged
        return
    clause_id, level = fx["breaks"], fx["level"]
    expected = "fail" if level == "MUST" else "warn"
    assert verdicts[clause_id] == expected, (
        f"{fx['name']} should {expected} {clause_id}, got {verdicts[clause_id]}\n{res.explain()}")
    others = [b for b in _bad(report) if not b.startswith(clause_id + " ")]
    assert not others, f"{fx['name']} breaks only {clause_id}, but also: {others}"
    assert res.rc == (1 if level == "MUST" else 0), res.explain()
    if level == "SHOULD":
        strict = sockconf("check", str(target), "--strict", "--clause", clause_id,
                          tmp_path=tmp_path)
        assert strict.rc == 1, strict.explain()
        assert strict.verdicts[clause_id] == "warn"


# The fault-injection checks whose 2-phase point t_detour's extra calls shift
# (accept is injected at the first call of each thread, which the detour leaves alone).
DETOURED = {
    "test_server_emfile[socket-EMFILE]", "test_client_emfile[socket-EMFILE]",
    *(f"test_server_{kind}[{step}]" for kind in ("errors_not_on_stdout", "fault_injection",
                                                  "names_failed_call")
      for step in ("socket-EAFNOSUPPORT", "bind-EADDRNOTAVAIL", "listen-EOPNOTSUPP")),
    *(f"test_client_{kind}[{step}]" for kind in ("errors_not_on_stdout", "fault_injection",
                                                  "names_failed_call")
      for step in ("socket-EAFNOSUPPORT", "connect-ENETUNREACH", "read-EIO")),
    "test_server_names_failed_call[socket-EMFILE]", "test_client_names_failed_call[socket-EMFILE]",
    "test_server_eintr_retried[read]", "test_server_eintr_retried[write]",
    "test_client_eintr_retried",
}


def test_err_fault_did_not_land(fixtures_built: Callable[[str], Path], tmp_path: Path) -> None:
    """A program whose calls differ from its traced normal run (t_detour: extra
    calls when fault-injected) is not judged on a fault that hit something else:
    those checks skip with "fault did not land", the others pass, nothing fails."""
    target = fixtures_built("hello") / "targets" / "t_detour.toml"
    res = sockconf("check", str(target), "--clause", "ERR-4", "ERR-5", "ERR-7", "ERR-8", "ERR-9",
                   "-n", "2", tmp_path=tmp_path)
    report = res.report or {}
    assert res.rc == 0 and not _bad(report), res.explain()
    outcomes = {t["nodeid"].split("::")[-1]: t for c in report["clauses"] for t in c["tests"]}
    skipped = {n for n, t in outcomes.items() if t["outcome"] != "passed"}
    assert skipped == DETOURED, res.explain()
    for name in skipped:
        assert "fault did not land" in outcomes[name].get("message", ""), outcomes[name]
