"""Per-clause verdicts from test records → terminal summary and report JSON.

A clause's verdict is its worst test outcome (fail > warn > not-testable > skip > pass):
a clause is `pass` only when every check behind it ran and passed.  A clause no
check declares is reported as `skip` with the reason — a visible gap, never a pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conformance import __version__
from conformance.clauses import MUST, Clause

VERDICTS = ("pass", "fail", "warn", "skip", "not-testable")
_RANK = {"pass": 0, "skip": 1, "not-testable": 2, "warn": 3, "fail": 4}


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
    suite_error: bool = False    # the check itself broke (a sockconf bug), not the target

    def verdict(self, level: str) -> str:
        if self.suite_error:
            return "not-testable"
        if self.outcome == "passed":
            return "pass"
        if self.outcome == "skipped":
            return "skip"
        return "fail" if level == MUST else "warn"


@dataclass
class ClauseResult:
    clause: Clause
    verdict: str
    tests: list[TestRecord]
    reason: str = ""             # for skip/not-testable without a failing test: why

    def evidence(self) -> str:
        for t in self.tests:
            if t.verdict(self.clause.level) == self.verdict and t.message:
                return t.message
        return self.reason


def judge(clauses: Iterable[Clause], records: Iterable[TestRecord],
          gap_reasons: dict[str, str] | None = None) -> list[ClauseResult]:
    by_clause: dict[str, list[TestRecord]] = {}
    for r in records:
        by_clause.setdefault(r.clause, []).append(r)
    results = []
    for c in clauses:
        tests = by_clause.get(c.id, [])
        if not tests:
            reason = (gap_reasons or {}).get(c.id, "no check implements this clause yet")
            results.append(ClauseResult(c, "skip", [], reason))
            continue
        verdict = max((t.verdict(c.level) for t in tests), key=_RANK.__getitem__)
        results.append(ClauseResult(c, verdict, tests))
    return results


def summary(results: list[ClauseResult]) -> dict[str, int]:
    return _count([r.verdict for r in results])


def conformant(results: list[ClauseResult], strict: bool) -> bool:
    return _conformant([r.verdict for r in results], strict)


def _count(verdicts: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v] += 1
    return counts


def _conformant(verdicts: Iterable[str], strict: bool) -> bool:
    bad = {"fail", "warn"} if strict else {"fail"}
    return not any(v in bad for v in verdicts)


def suite_failed(results: list[ClauseResult]) -> bool:
    return any(t.suite_error for r in results for t in r.tests)


def to_json(results: list[ClauseResult], *, target: dict[str, Any], strict: bool) -> dict[str, Any]:
    return {
        "tool": "sockconf",
        "version": __version__,
        "target": target,
        "strict": strict,
        "conformant": conformant(results, strict),
        "summary": summary(results),
        "clauses": [
            {
                "id": r.clause.id,
                "level": r.clause.level,
                "title": r.clause.title,
                "verdict": r.verdict,
                **({"reason": r.reason} if r.reason else {}),
                "tests": [
                    {k: v for k, v in asdict(t).items() if k not in ("clause", "suite_error")}
                    | ({"suite_error": True} if t.suite_error else {})
                    for t in r.tests
                ],
            }
            for r in results
        ],
    }


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    p = Path(path)
    if p.parent != Path():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2) + "\n")


def terminal_lines(results: list[ClauseResult], *, target: dict[str, Any], strict: bool) -> list[str]:
    out = [f"sockconf {__version__}: {target.get('name')} (profile {target.get('profile')})"]
    width = max((len(r.clause.id) for r in results), default=8)
    for r in results:
        line = f"  {r.clause.id:<{width}}  {r.clause.level:<6}  {r.verdict.upper():<12}"
        if r.verdict != "pass":
            ev = r.evidence().strip().splitlines()
            if ev:
                line += f"  {ev[0][:160]}"
        else:
            line += f"  {r.clause.title}"
        out.append(line.rstrip())
    s = summary(results)
    verdict = "CONFORMANT" if conformant(results, strict) else "NOT CONFORMANT"
    out.append(f"  {verdict}{' (strict)' if strict else ''}: "
               + ", ".join(f"{n} {k}" for k, n in s.items()))
    return out


def combine(docs: dict[str, dict[str, Any]], *, strict: bool) -> dict[str, Any]:
    """One report for several per-profile reports of the same implementation
    (`sockconf check` with no target: the reference, all profiles).

    INTERFACE.md's shape is kept: a clause's verdict is its worst over the
    profiles it applies to, and its tests are all of theirs (node ids prefixed
    with the profile); `profiles` adds each profile's report in full."""
    clauses: dict[str, dict[str, Any]] = {}
    for profile, doc in docs.items():
        for c in doc["clauses"]:
            merged = clauses.setdefault(c["id"], {k: v for k, v in c.items() if k != "tests"}
                                        | {"tests": []})
            if _RANK[c["verdict"]] > _RANK[merged["verdict"]]:
                merged["verdict"] = c["verdict"]
                merged.pop("reason", None)
                if "reason" in c:
                    merged["reason"] = c["reason"]
            merged["tests"] += [t | {"nodeid": f"[{profile}] {t['nodeid']}"} for t in c["tests"]]
    rows = list(clauses.values())
    verdicts = [r["verdict"] for r in rows]
    return {
        "tool": "sockconf",
        "version": __version__,
        "target": {"name": "built-in reference (all profiles)", "profile": ",".join(docs),
                   "file": None},
        "strict": strict,
        "conformant": all(d["conformant"] for d in docs.values())
        and _conformant(verdicts, strict),
        "summary": _count(verdicts),
        "clauses": rows,
        "profiles": docs,
    }
