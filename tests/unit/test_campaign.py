"""checks/campaign.py: a campaign's rounds are sized through the settings
attribute @given reads (no public API changes a decorated test's settings
between runs); this pins that it works, so a hypothesis upgrade that moves it
fails here instead of making every round the profile's full size."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.checks import campaign


def test_round_size_bounds_the_next_run() -> None:
    runs: list[int] = []

    @settings(max_examples=50, database=None, deadline=None)
    @given(st.integers())
    def example(n: int) -> None:
        runs[-1] += 1

    for size in (5, 12, 500):
        runs.append(0)
        campaign._round_size(example, size)
        example()
    assert runs[0] <= 5 and runs[1] <= 12 and runs[2] > 12
    assert runs[2] <= 50  # never more than the profile's


def test_a_normal_run_is_one_run() -> None:
    calls: list[int] = []
    assert campaign.PLAN.seconds is None
    campaign.run(lambda: calls.append(1), lambda: len(calls), "examples")
    assert calls == [1]
