"""What a run's verdicts depend on (INTERFACE.md, report `environment`): sockconf
version, kernel, strace (version or absence), isolation kind, capture, root, the
hypothesis profile and seed.  Recorded in every report so that two reports of the
same target can be told apart by their conditions, not only by their verdicts."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from conformance import __version__

# netns.Isolation.kind -> the name INTERFACE.md gives it.
_ISOLATION_NAMES = {"netns": "netns", "userns": "user+netns", "host": "host"}


def strace_version() -> str | None:
    """The installed strace's version ("6.1"), "unknown" when it runs but says
    no version, None when there is no strace (the tracing clauses then skip)."""
    from conformance.harness import strace
    path = strace.strace_path()
    if path is None:
        return None
    try:
        out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"version\s+(\d+(?:\.\d+)*)", out)
    return m.group(1) if m else "unknown"


def _seed(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    s = str(value)
    return int(s) if s.isdigit() else s


def describe_environment(*, isolation: dict[str, Any] | None, isolation_mode: str,
                         userns: bool, root: bool, hypothesis_profile: str | None,
                         hypothesis_seed: Any) -> dict[str, Any]:
    """The `environment` block.  `isolation`: a worker's netns.Isolation as a dict
    (kind, wire, reason), None when no check asked for one — then the kind is
    what the run would have used, and capture is unknown (None)."""
    if isolation is not None:
        kind = _ISOLATION_NAMES.get(isolation["kind"], isolation["kind"])
        capture: bool | None = bool(isolation["wire"])
        reason = isolation.get("reason")
    else:
        if isolation_mode == "none":
            kind = "host"
        else:
            kind = "netns" if root else ("user+netns" if userns else "host")
        capture, reason = None, None
    env: dict[str, Any] = {
        "sockconf": __version__,
        "kernel": os.uname().release,
        "strace": strace_version(),
        "isolation": kind,
        "capture": capture,
        "root": root,
        "hypothesis_profile": hypothesis_profile,
        "hypothesis_seed": _seed(hypothesis_seed),
    }
    if reason:
        env["isolation_note"] = reason
    return env
