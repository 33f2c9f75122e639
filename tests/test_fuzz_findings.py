"""A planted bug found by fuzzing is reported with its shrunk example and a
one-line command that replays it (issue: "every fuzz failure in the report
carries the minimal example and the exact command (seed) that replays it")."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import sockconf

SHRUNK = "core=b'\\x00'"  # the smallest payload a strlen()-framed echo loses


def _fuzz_failure(report: dict[str, Any]) -> dict[str, Any]:
    clause = next(c for c in report["clauses"] if c["id"] == "ECHO-1")
    assert clause["verdict"] == "fail", clause
    found = [t for t in clause["tests"] if "fuzz" in t["nodeid"] and t["outcome"] == "failed"]
    assert found, [t["nodeid"] for t in clause["tests"]]
    return found[0]


def test_planted_bug_shrunk_and_replayed(fixtures_built: Callable[[str], Path],
                                         tmp_path: Path) -> None:
    target = fixtures_built("echo") / "targets" / "m_echo1_strlen.toml"
    # dev profile: random (not derandomized), so the replay depends on the seed.
    # One fuzz check (tcp4): the fixed ECHO-1 cases would fail too, but not by fuzzing.
    first = sockconf("check", str(target), "--test", "test_echo_fuzz[tcp4]",
                     "--hypothesis-profile", "dev", tmp_path=tmp_path)
    assert first.rc == 1, first.explain()
    test = _fuzz_failure(first.report or {})
    assert "Failing test case" in test["message"] or "Falsifying example" in test["message"], \
        test["message"]
    assert SHRUNK in test["message"], test["message"]
    replay = shlex.split(test["reproduce"])
    assert replay[:2] == ["sockconf", "check"] and "--hypothesis-seed" in replay, replay
    assert replay[replay.index("--clause") + 1] == "ECHO-1"
    # Only the check that found it is replayed.
    assert replay[replay.index("--test") + 1] == "test_echo_fuzz[tcp4]", replay

    # The line as printed, run as a user would (python -m conformance is `sockconf`).
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    again = sockconf(*replay[1:], tmp_path=again_dir)
    assert again.rc == 1, again.explain()
    retest = _fuzz_failure(again.report or {})
    assert SHRUNK in retest["message"], retest["message"]
    assert sorted(shlex.split(retest["reproduce"])) == sorted(replay), retest["reproduce"]
