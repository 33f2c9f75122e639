"""Helpers of the project's own tests: the fixture manifest and running `sockconf`
as a user would (a subprocess, the same entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
HELLO = FIXTURES / "hello"
PROFILES = ("hello", "echo", "jsondoc")


def manifest(profile: str) -> list[dict[str, Any]]:
    """fixtures/PROFILE/fixtures.toml: the programs whose verdicts we know."""
    path = FIXTURES / profile / "fixtures.toml"
    if not path.exists():
        return []
    return [fx | {"profile": profile} for fx in tomllib.loads(path.read_text())["fixture"]]


def polyglot_manifest() -> list[dict[str, Any]]:
    """fixtures/polyglot/fixtures.toml: legal programs in other runtimes, each with
    the profile its target file declares and `family` "polyglot"."""
    root = FIXTURES / "polyglot"
    out = []
    for fx in tomllib.loads((root / "fixtures.toml").read_text())["fixture"]:
        profile = tomllib.loads((root / fx["target"]).read_text())["profile"]
        out.append(fx | {"profile": profile, "family": "polyglot"})
    return out


@dataclass
class Checked:
    rc: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None

    @property
    def verdicts(self) -> dict[str, str]:
        assert self.report is not None, f"no report (rc={self.rc}):\n{self.stdout}\n{self.stderr}"
        return {c["id"]: c["verdict"] for c in self.report["clauses"]}

    def explain(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


def sockconf(*args: str, tmp_path: Path, timeout: float = 600, report: bool = True,
             env: dict[str, str] | None = None) -> Checked:
    """Run `sockconf` (as `python -m conformance`, the same entry point) to its end."""
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "conformance", *args]
    if report:
        cmd += ["--report-json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                         env={**os.environ, **(env or {})})
    doc = json.loads(out.read_text()) if report and out.exists() else None
    return Checked(res.returncode, res.stdout, res.stderr, doc)
