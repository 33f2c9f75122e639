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


def test_campaign_finds_shrinks_and_replays(fixtures_built: Callable[[str], Path],
                                            tmp_path: Path) -> None:
    # A campaign of about a minute (`sockconf fuzz`, = check --duration) on one
    # fuzz check: its progress shows the finding as it appears, the report has the
    # shrunk example, and the reproduce line (naming the campaign's example
    # database) replays it.
    target = fixtures_built("echo") / "targets" / "m_echo1_strlen.toml"
    art = tmp_path / "campaign"
    first = sockconf("fuzz", str(target), "--duration", "60s", "--artifacts", str(art),
                     "--test", "test_echo_fuzz[tcp4]", "-n", "0", tmp_path=tmp_path)
    assert first.rc == 1, first.explain()
    assert "fuzz: ECHO-1 test_echo_fuzz[tcp4]: FINDING" in first.stdout, first.stdout[-3000:]
    test = _fuzz_failure(first.report or {})
    assert SHRUNK in test["message"], test["message"]
    replay = shlex.split(test["reproduce"])
    assert replay[:2] == ["sockconf", "check"] and "--duration" not in replay, replay
    assert replay[replay.index("--hypothesis-db") + 1] == str(art / "hypothesis-db"), replay
    assert replay[replay.index("--test") + 1] == "test_echo_fuzz[tcp4]", replay
    assert (art / "hypothesis-db").is_dir() and (art / "campaign.log").exists()

    again_dir = tmp_path / "again"
    again_dir.mkdir()
    again = sockconf(*replay[1:], tmp_path=again_dir)
    assert again.rc == 1, again.explain()
    assert SHRUNK in _fuzz_failure(again.report or {})["message"]

    # A second campaign starts from the first one's findings: the saved example
    # fails again before a single new example is judged.
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = sockconf("fuzz", str(target), "--duration", "5s", "--artifacts", str(art),
                      "--test", "test_echo_fuzz[tcp4]", "-n", "0", tmp_path=second_dir)
    assert second.rc == 1, second.explain()
    assert "FINDING in round 1 after 0 examples" in second.stdout, second.stdout[-3000:]
