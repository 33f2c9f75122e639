"""Wire verdicts on a capture that lost packets: never a pass, never an absence.

The wire checks (LIFE-4, HELLO-3, CLI-2, CLI-5) run here against the reference hello
programs, through a real Testbed, with the testbed's capture swapped for one that
is forced to drop (max_frames too small: the overflow is counted as loss).  The
same checks pass with the testbed's own lossless capture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.checks import test_client, test_hello, test_life
from conformance.evidence import Inconclusive, Pass
from conformance.harness import capture, netns
from conformance.harness.capture import Capture
from conformance.harness.testbed import Testbed
from conformance.target import builtin

CHECKS: dict[str, Callable[[Testbed], Any]] = {
    "LIFE-4": lambda bed: test_life.test_graceful_end(bed, "tcp4"),
    "HELLO-3": lambda bed: test_hello.test_client_data_harmless(bed, "after"),
    "CLI-2": test_client.test_one_byte_segments,
    "CLI-5": test_client.test_sends_nothing,
}


@pytest.fixture(scope="module")
def iso() -> netns.Isolation:
    result = netns.isolate()
    reason = capture.available()
    if reason is not None or not result.wire:
        pytest.skip(reason or result.reason or "no wire capture here")
    return result


@pytest.fixture
def bed(iso: netns.Isolation, tmp_path: Path) -> Iterator[Testbed]:
    tb = Testbed(builtin("reference-hello"), iso, tmp_path, name="wire-verdicts")
    try:
        yield tb
    finally:
        tb.close()


@pytest.mark.parametrize("clause", list(CHECKS))
def test_lossless_capture_gives_pass(bed: Testbed, clause: str) -> None:
    result = CHECKS[clause](bed)
    assert isinstance(result, Pass), result
    assert bed.wire() in result.observations


@pytest.mark.parametrize("clause", list(CHECKS))
def test_lossy_capture_gives_skip_not_pass(bed: Testbed, clause: str) -> None:
    assert bed.capture is not None
    bed.capture.stop()
    bed.capture = Capture("lo", max_frames=3).start()   # every exchange has more frames
    with pytest.raises(Inconclusive) as ei:
        CHECKS[clause](bed)
    assert ei.value.kind == "skip"
    assert "capture dropped" in ei.value.reason, ei.value.reason
