"""checks/fuzzing.py: what a fuzz check judged, and the shrink bound it relies on.

The shrink bound is set through hypothesis' engine.MAX_SHRINKING_SECONDS, which
hypothesis documents as a knob to patch but which is not public API: these tests
pin the behaviour we rely on, so a hypothesis upgrade that moves it fails here
rather than silently shrinking for five minutes a check.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine

from conformance.checks.fuzzing import SHRINK_S, Fuzz, shrink_seconds
from conformance.evidence import Inconclusive, Pass, Violation

FAST = settings(max_examples=20, database=None, deadline=None, derandomize=True)


def test_the_shrink_knob_exists_and_is_restored() -> None:
    assert isinstance(engine.MAX_SHRINKING_SECONDS, int)
    before = engine.MAX_SHRINKING_SECONDS
    seen: list[int] = []
    fuzz = Fuzz()

    @FAST
    @given(st.integers())
    def example(n: int) -> None:
        seen.append(engine.MAX_SHRINKING_SECONDS)
        fuzz.judged()

    fuzz.run(example, "integers")
    assert set(seen) == {shrink_seconds()} and shrink_seconds() in SHRINK_S.values()
    assert engine.MAX_SHRINKING_SECONDS == before


def test_the_knob_bounds_the_shrinker(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound at 0 the shrinker stops at once: the falsifying example is
    reported unshrunk (the engine reads the module constant when shrinking)."""
    calls = 0

    @settings(max_examples=200, database=None, deadline=None, derandomize=True)
    @given(st.lists(st.integers(), min_size=30))
    def failing(xs: list[int]) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.001)
        raise Violation("always")

    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 0)
    with pytest.raises(Violation):
        failing()
    unbounded_calls = calls
    calls = 0
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 300)
    with pytest.raises(Violation):
        failing()
    assert unbounded_calls < calls, (unbounded_calls, calls)


def test_pass_says_how_many_were_judged_and_rejects_do_not_count() -> None:
    fuzz = Fuzz("payloads")

    @FAST
    @given(st.integers(0, 9))
    def example(n: int) -> None:
        if n == 3:
            fuzz.reject("three cannot be judged")
        fuzz.judged()

    result = fuzz.run(example, "digits")
    assert isinstance(result, Pass)
    assert f"{fuzz.count} payloads judged" in result.evidence and fuzz.count > 0


def test_nothing_judged_is_inconclusive() -> None:
    fuzz = Fuzz()

    @FAST
    @given(st.integers())
    def example(n: int) -> None:
        fuzz.reject("the server does not echo at all (ECHO-1's concern)")

    with pytest.raises(Inconclusive) as ei:
        fuzz.run(example, "nothing")
    assert "0 of" in ei.value.reason and "ECHO-1" in ei.value.reason
