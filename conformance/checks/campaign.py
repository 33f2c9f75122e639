"""How a fuzz check's hypothesis test is run: once (a normal check), or in rounds
until its share of a campaign's time is used (`sockconf check --duration`).

A campaign keeps hypothesis' example database under its artifacts dir: a failure
it found is saved there, and the next campaign (or the finding's reproduce line,
which names the database) replays it first.  hypothesis uses a database only
when no seed is forced (neither globally nor by @seed), so a run with a database
draws its own random seeds: each round of a campaign explores anew, and a
finding replays from the database.  Each check appends progress lines (examples
judged, examples per second, a finding) to the campaign's log, which `sockconf
check` prints as it grows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Plan:
    """Set by the plugin for this process in a campaign: the seconds each fuzz
    check fuzzes, and the progress log."""
    seconds: float | None = None
    log: Path | None = None
    check: str = ""            # the running check's name, for the progress lines


PLAN = Plan()
PROGRESS_EVERY = 10.0  # seconds between a check's progress lines


def run(test: Callable[[], None], judged: Callable[[], int], what: str) -> None:
    """Run a hypothesis test (a @given function, or a callable that runs one):
    once, or in rounds for PLAN.seconds.  `judged()` says how many examples
    were judged so far (for the progress lines)."""
    if PLAN.seconds is None:
        test()
        return
    start = time.monotonic()
    rounds = 0
    shown = 0.0
    while True:
        elapsed = time.monotonic() - start
        # Size the round to end near the deadline: 10 examples first, then what
        # the rate so far fits in the time left.
        rate = judged() / elapsed if rounds and elapsed > 0 else 0.0
        _round_size(test, max(10, int(rate * (PLAN.seconds - elapsed) * 0.9)) if rounds else 10)
        try:
            test()
        except BaseException as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            _progress(f"{PLAN.check}: FINDING in round {rounds + 1} after {judged()} {what} "
                      f"({time.monotonic() - start:.0f} s): {first}")
            raise
        rounds += 1
        elapsed = time.monotonic() - start
        done = elapsed >= PLAN.seconds
        if done or elapsed - shown >= PROGRESS_EVERY:
            shown = elapsed
            _progress(f"{PLAN.check}: {judged()} {what} judged in {elapsed:.0f} s "
                      f"({judged() / max(elapsed, 1e-9):.0f}/s, {rounds} round(s)), no finding"
                      + ("" if done else " yet"))
        if done:
            return


def _round_size(test: Callable[[], None], examples: int) -> None:
    """At most `examples` examples in the next run of a @given test (never more
    than its profile's).  hypothesis has no public way to change a decorated
    test's settings between runs (applying @settings twice is refused): this
    sets the attribute @given reads them from, as @settings does, and
    tests/unit/test_campaign.py pins that it works.  A test without it (a
    callable that runs a state machine) keeps its own size."""
    from hypothesis import settings

    current = getattr(test, "_hypothesis_internal_use_settings", None)
    if current is None:
        return
    base = getattr(test, "_sockconf_round_base", None) or current
    test._sockconf_round_base = base  # type: ignore[attr-defined]
    test._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
        base, max_examples=max(1, min(examples, base.max_examples)))


def _progress(line: str) -> None:
    if PLAN.log is None:
        return
    # One short write in append mode: lines of concurrent workers never interleave.
    fd = os.open(PLAN.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    finally:
        os.close(fd)
