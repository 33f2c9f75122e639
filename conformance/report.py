"""Per-clause verdicts from test records → terminal summary and report JSON.

A test's verdict comes from its judgement (conformance/evidence.py): `pass`,
`fail`/`warn` (a Violation of a MUST/SHOULD clause), `skip`/`not-testable`
(Inconclusive), or `error` (the suite itself broke: never the target's fault).

A clause's verdict is its worst test verdict (error > fail > warn > not-testable >
skip > pass): a clause is `pass` only when every check behind it ran and passed.
A test that does not apply to the target (Inconclusive kind `not-applicable`, e.g.
an option the target does not declare) never lowers a clause that other tests
judged; a clause whose tests are all not-applicable is `skip` with their reason.
A clause no check declares is reported as `skip` with the reason — a visible gap,
never a pass.

A run is *complete* when every MUST clause it reports was judged: a MUST clause
left `skip`/`not-testable` for any reason other than "the target does not declare
it" (not-applicable) makes it incomplete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance import __version__
from conformance.clauses import MUST, Clause
from conformance.evidence import NOT_APPLICABLE, NOT_TESTABLE, SKIP

PASS, FAIL, WARN, ERROR = "pass", "fail", "warn", "error"
VERDICTS = (PASS, FAIL, WARN, SKIP, NOT_TESTABLE, ERROR)
_RANK = {PASS: 0, SKIP: 1, NOT_TESTABLE: 2, WARN: 3, FAIL: 4, ERROR: 5}
_UNJUDGED = (SKIP, NOT_TESTABLE)


@dataclass
class TestRecord:
    __test__ = False  # not a pytest test class
    nodeid: str
    clause: str
    outcome: str                 # pytest's: passed | failed | skipped | error
    duration_s: float = 0.0
    message: str = ""
    artifacts: list[str] = field(default_factory=list)
    reproduce: str = ""
    kind: str = ""               # a skipped test's Inconclusive kind (skip | not-testable | not-applicable)
    suite_error: bool = False    # the suite itself broke (a sockconf bug), not the target
    traceback: str = ""          # with suite_error: where it broke

    @property
    def not_applicable(self) -> bool:
        return self.outcome == "skipped" and self.kind == NOT_APPLICABLE

    def verdict(self, level: str) -> str:
        if self.suite_error:
            return ERROR
        if self.outcome == "passed":
            return PASS
        if self.outcome == "skipped":
            return NOT_TESTABLE if self.kind == NOT_TESTABLE else SKIP
        return FAIL if level == MUST else WARN

    def to_json(self, level: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "nodeid": self.nodeid, "outcome": self.outcome, "verdict": self.verdict(level),
            "duration_s": self.duration_s, "message": self.message,
            "artifacts": list(self.artifacts), "reproduce": self.reproduce}
        if self.outcome == "skipped":
            doc["kind"] = self.kind or SKIP
        if self.suite_error:
            doc["suite_error"] = True
            doc["traceback"] = self.traceback
        return doc


@dataclass
class ClauseResult:
    clause: Clause
    verdict: str
    tests: list[TestRecord]
    reason: str = ""             # for skip/not-testable without a judging test: why
    not_applicable: bool = False  # skipped only because it does not apply to the target

    def evidence(self) -> str:
        for t in self.tests:
            if not t.not_applicable and t.verdict(self.clause.level) == self.verdict and t.message:
                return t.message
        return self.reason

    @property
    def unjudged(self) -> bool:
        """A MUST clause that applies to the target and was not judged."""
        return (self.clause.level == MUST and self.verdict in _UNJUDGED
                and not self.not_applicable)


def judge(clauses: Iterable[Clause], records: Iterable[TestRecord],
          gaps: dict[str, tuple[str, str]] | None = None) -> list[ClauseResult]:
    """Clause verdicts from test records.  `gaps`: for clauses without records,
    (reason, kind) — kind `not-applicable` when the target does not declare what
    the clause is about, `skip` for a gap of the suite."""
    by_clause: dict[str, list[TestRecord]] = {}
    for r in records:
        by_clause.setdefault(r.clause, []).append(r)
    results = []
    for c in clauses:
        tests = by_clause.get(c.id, [])
        judging = [t for t in tests if not t.not_applicable]
        if not tests:
            reason, kind = (gaps or {}).get(c.id, ("no check implements this clause yet", SKIP))
            results.append(ClauseResult(c, SKIP, [], reason, not_applicable=kind == NOT_APPLICABLE))
        elif not judging:
            reason = next((t.message for t in tests if t.message), "does not apply to the target")
            results.append(ClauseResult(c, SKIP, tests, reason, not_applicable=True))
        else:
            verdict = max((t.verdict(c.level) for t in judging), key=_RANK.__getitem__)
            results.append(ClauseResult(c, verdict, tests))
    return results


def summary(results: list[ClauseResult]) -> dict[str, int]:
    return _count([r.verdict for r in results])


def conformant(results: list[ClauseResult], strict: bool) -> bool | None:
    """True/False; None when a suite error left the answer unknown (no failure
    seen, but some clause could not be judged because sockconf broke)."""
    return _conformant([r.verdict for r in results], strict)


def incomplete(results: list[ClauseResult]) -> list[ClauseResult]:
    """The MUST clauses that apply and were not judged."""
    return [r for r in results if r.unjudged]


def complete(results: list[ClauseResult]) -> bool:
    return not incomplete(results)


def _count(verdicts: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v] += 1
    return counts


def _conformant(verdicts: Iterable[str], strict: bool) -> bool | None:
    vs = list(verdicts)
    bad = {FAIL, WARN} if strict else {FAIL}
    if any(v in bad for v in vs):
        return False
    return None if ERROR in vs else True


def suite_failed(results: list[ClauseResult]) -> bool:
    return any(r.verdict == ERROR or any(t.suite_error for t in r.tests) for r in results)


def to_json(results: list[ClauseResult], *, target: dict[str, Any], strict: bool,
            environment: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "tool": "sockconf",
        "version": __version__,
        "target": target,
        "strict": strict,
        "complete": complete(results),
        "environment": environment or {},
        # A boolean, as INTERFACE.md has it: a run a suite error left without a
        # verdict is not shown conformant (the terminal says NO VERDICT, exit 3).
        "conformant": conformant(results, strict) is True,
        "summary": summary(results),
        "clauses": [
            {
                "id": r.clause.id,
                "level": r.clause.level,
                "title": r.clause.title,
                "verdict": r.verdict,
                **({"reason": r.reason} if r.reason else {}),
                **({"not_applicable": True} if r.not_applicable else {}),
                "tests": [t.to_json(r.clause.level) for t in r.tests],
            }
            for r in results
        ],
    }


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    p = Path(path)
    if p.parent != Path():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2) + "\n")


def clause_line(r: ClauseResult, width: int = 8) -> str:
    """One clause as the terminal shows it: ID, level, verdict, evidence or title."""
    line = f"  {r.clause.id:<{width}}  {r.clause.level:<6}  {r.verdict.upper():<12}"
    if r.verdict != PASS:
        ev = r.evidence().strip().splitlines()
        if ev:
            line += f"  {ev[0][:160]}"
    else:
        line += f"  {r.clause.title}"
    return line.rstrip()


def not_judged_line(unjudged: list[tuple[str, str]]) -> str:
    """`N MUST clauses not judged (ID, ID: reason; ...)` from (id, reason) pairs."""
    by_reason: dict[str, list[str]] = {}
    for cid, reason in unjudged:
        first = (reason.strip().splitlines() or ["no reason given"])[0][:100]
        by_reason.setdefault(first, []).append(cid)
    reasons = "; ".join(f"{', '.join(ids)}: {why}" for why, ids in by_reason.items())
    n = len(unjudged)
    return f"{n} MUST clause{'s' if n != 1 else ''} not judged ({reasons})"


def headline(verdicts: list[str], strict: bool, unjudged: list[tuple[str, str]]) -> str:
    """The one-line verdict of a run, e.g. `CONFORMANT, INCOMPLETE: 2 MUST clauses
    not judged (...)`."""
    ok = _conformant(verdicts, strict)
    errors = sum(v == ERROR for v in verdicts)
    if ok is None:
        head = "NO VERDICT"
    else:
        head = ("CONFORMANT" if ok else "NOT CONFORMANT") + (" (strict)" if strict else "")
    parts = [head]
    if errors:
        parts.append(f"SUITE ERROR in {errors} clause{'s' if errors != 1 else ''} "
                     "(a fault of sockconf, not of the target: exit status 3)")
    if unjudged:
        parts.append(f"INCOMPLETE: {not_judged_line(unjudged)}")
    return ", ".join(parts)


def terminal_lines(results: list[ClauseResult], *, target: dict[str, Any], strict: bool,
                   clauses: bool = True) -> list[str]:
    out = [f"sockconf {__version__}: {target.get('name')} (profile {target.get('profile')})"]
    if clauses:
        width = max((len(r.clause.id) for r in results), default=8)
        out += [clause_line(r, width) for r in results]
    out.append("  " + ", ".join(f"{n} {k}" for k, n in summary(results).items()))
    unjudged = [(r.clause.id, r.evidence()) for r in incomplete(results)]
    out.append("  " + headline([r.verdict for r in results], strict, unjudged))
    return out


def combine(docs: dict[str, dict[str, Any]], *, strict: bool) -> dict[str, Any]:
    """One report for several per-profile reports of the same implementation
    (`sockconf check` with no target: the reference, all profiles).

    INTERFACE.md's shape is kept: a clause's verdict is its worst over the
    profiles it applies to, and its tests are all of theirs (node ids prefixed
    with the profile); `complete` holds when every profile's run was complete;
    `environment` is the runs' (one machine, one invocation); `profiles` adds
    each profile's report in full."""
    clauses: dict[str, dict[str, Any]] = {}
    for profile, doc in docs.items():
        for c in doc["clauses"]:
            merged = clauses.setdefault(c["id"], {k: v for k, v in c.items() if k != "tests"}
                                        | {"tests": []})
            if _RANK[c["verdict"]] > _RANK[merged["verdict"]]:
                merged["verdict"] = c["verdict"]
                for k in ("reason", "not_applicable"):
                    merged.pop(k, None)
                    if k in c:
                        merged[k] = c[k]
            merged["tests"] += [t | {"nodeid": f"[{profile}] {t['nodeid']}"} for t in c["tests"]]
    rows = list(clauses.values())
    verdicts = [r["verdict"] for r in rows]
    ok = _conformant(verdicts, strict) is True and all(d.get("conformant") is True
                                                      for d in docs.values())
    return {
        "tool": "sockconf",
        "version": __version__,
        "target": {"name": "built-in reference (all profiles)", "profile": ",".join(docs),
                   "file": None},
        "strict": strict,
        "complete": all(d.get("complete", False) for d in docs.values()),
        "environment": next((d["environment"] for d in docs.values() if d.get("environment")),
                            {}),
        "conformant": ok,
        "summary": _count(verdicts),
        "clauses": rows,
        "profiles": docs,
    }


def unjudged_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(id, reason) of the MUST clauses a report document left unjudged."""
    out = []
    for c in doc["clauses"]:
        if c["level"] == MUST and c["verdict"] in _UNJUDGED and not c.get("not_applicable"):
            msgs = [t.get("message", "") for t in c["tests"] if t.get("verdict") == c["verdict"]]
            out.append((c["id"], next((m for m in msgs if m), c.get("reason", ""))))
    return out


def headline_of(doc: dict[str, Any]) -> str:
    """The run's one-line verdict, from a report document (one profile's or combined)."""
    return headline([c["verdict"] for c in doc["clauses"]], bool(doc.get("strict")),
                    unjudged_of(doc))
