"""Graceful degradation: without strace, the tracing clauses say `skip` with
the install hint — never `pass`, never a failure of the target — and the run
says it is INCOMPLETE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import _build, _target_file

TRACED = ["LIFE-0", "ERR-7", "ERR-8", "CLI-4", "ARGS-1"]


def test_without_strace_tracing_clauses_skip_with_hint(tmp_path: Path) -> None:
    d = _build(tmp_path / "bin", "good_server", "good_client")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "conformance", "check", str(_target_file(d)), "--clause", *TRACED,
         "--report-json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PATH": str(empty)})  # no strace (nor anything else) on PATH
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    for c in doc["clauses"]:
        assert c["verdict"] == "skip", c
        assert any("apt-get install strace" in t["message"] for t in c["tests"]), c
    # Conformant as far as judged, but never a silent pass: the run says it is
    # incomplete, records that strace was missing, and --require-complete fails it.
    assert doc["complete"] is False and doc["environment"]["strace"] is None
    must = [c["id"] for c in doc["clauses"] if c["level"] == "MUST"]
    assert f"CONFORMANT, INCOMPLETE: {len(must)} MUST clauses not judged" in res.stdout, res.stdout
    again = subprocess.run(
        [sys.executable, "-m", "conformance", "check", str(_target_file(d)), "--clause", "ARGS-1",
         "--require-complete"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PATH": str(empty)})
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-2000:]
