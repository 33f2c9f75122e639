"""Observations and judgements as values: the only way a check reaches a verdict.

The harness produces *observations* that carry their own quality (a trace with
lines it could not parse, a capture that dropped packets, a fault that never
landed, a socket option that could not be read).  A check turns observations into
a *judgement*:

* ``Pass(evidence, *observations)`` — returned by the check.  Building it from an
  observation of unknown quality raises ``Inconclusive`` instead: a `pass` can only
  be reached with its evidence in hand.
* ``Violation(message)`` — raised: the target broke the clause (`fail`, or `warn`
  for a SHOULD).  The only judgement that counts against the target.
* ``Inconclusive(reason, kind)`` — raised: nothing could be judged here
  (``skip``: cannot be exercised in this environment; ``not-testable``: only the
  target's own protection prevents observing it; ``not-applicable``: this test
  does not apply to this target, e.g. an option it does not declare — it never
  lowers a clause that other tests judged).

Anything else a check raises (an ``OSError`` of the harness, a failed ``assert``,
a bug) is the suite's fault: verdict ``error``, exit status 3.

This module knows nothing of pytest: the plugin maps judgements to outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

SKIP = "skip"
NOT_TESTABLE = "not-testable"
NOT_APPLICABLE = "not-applicable"
KINDS = (SKIP, NOT_TESTABLE, NOT_APPLICABLE)


@dataclass(frozen=True)
class Doubt:
    """Why an observation cannot back a `pass`, and which inconclusive verdict
    that gives."""
    reason: str
    kind: str = SKIP


@runtime_checkable
class Observation(Protocol):
    """Anything the harness observed.  `doubt()` is None when the observation is
    known to be sound (the capture was lossless, the trace was understood, the
    fault landed, the descriptor was read), else the reason it is not."""

    def doubt(self) -> Doubt | None: ...


class Inconclusive(Exception):
    """Nothing to judge: the verdict is `skip`, `not-testable` or (for this test
    only) `not-applicable`, with the reason."""

    def __init__(self, reason: str, kind: str = SKIP) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown inconclusive kind {kind!r}")
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    @classmethod
    def of(cls, doubt: Doubt, context: str = "") -> Inconclusive:
        return cls(f"{context}: {doubt.reason}" if context else doubt.reason, doubt.kind)


class Violation(Exception):
    """The target broke the clause under test: `fail` (MUST) or `warn` (SHOULD).

    The message is the evidence line shown in the report (expected vs seen);
    `expected`/`seen` may be given separately for the JSON report."""

    def __init__(self, message: str, *, expected: str | None = None,
                 seen: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.seen = seen


def require(*observations: Observation, context: str = "") -> None:
    """Raise Inconclusive unless every observation is sound — for a check that
    must know its observation is sound before it may *judge* it either way
    (e.g. an unparsed trace: neither a pass nor a violation can be read off it)."""
    for o in observations:
        d = o.doubt()
        if d is not None:
            raise Inconclusive.of(d, context)


@dataclass(frozen=True, init=False)
class Pass:
    """The clause was met, with the evidence that shows it.

    Construction checks every observation given: one of unknown quality raises
    Inconclusive (skip / not-testable) instead of producing a pass."""
    evidence: str
    observations: tuple[Observation, ...]

    def __init__(self, evidence: str, *observations: Observation) -> None:
        if not evidence.strip():
            raise ValueError("a Pass needs its evidence in words")
        require(*observations)
        object.__setattr__(self, "evidence", evidence)
        object.__setattr__(self, "observations", tuple(observations))

    @classmethod
    def all(cls, passes: Iterable[Pass]) -> Pass:
        """One Pass for several judged parts (e.g. one per bad input)."""
        items = list(passes)
        if not items:
            raise Inconclusive("nothing was judged")
        obs = tuple(o for p in items for o in p.observations)
        return cls("; ".join(p.evidence for p in items), *obs)


Judgement = Pass | Violation | Inconclusive
