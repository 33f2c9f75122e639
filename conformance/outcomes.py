"""How a check's end becomes an outcome: a judgement against the target, or the
suite's own error.

Only a `Violation` counts against the target (conformance/evidence.py); any other
exception in setup, call or teardown is sockconf's fault (verdict `error`, exit
status 3), and a check that returns without a `Pass` has proven nothing.  These
are the pure parts of that mapping, kept apart from the pytest hooks that apply
them (conformance/plugin.py).
"""

from __future__ import annotations

import traceback
from pathlib import Path

from conformance.evidence import Violation

CHECKS_DIR = Path(__file__).resolve().parent / "checks"


class NoJudgement(Exception):
    """A check ended without returning a Pass or raising a judgement: a bug of
    the check (the suite's error, never a pass)."""


def raised_in_check_code(exc: BaseException) -> bool:
    """True when the innermost frame of exc's traceback is a check's own code
    (conformance/checks/), not the harness or pytest."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(CHECKS_DIR)
    except OSError:
        return False


def target_failure(exc: BaseException, when: str) -> bool:
    """True when the exception is a judgement against the target (a Violation),
    False when the suite itself broke (verdict `error`, exit 3).  Nothing is
    guessed from exception types: an OSError or a failed assert of the suite's
    own is the suite's fault.  In teardown only a check's own code may judge the
    target (e.g. "the server did not end on SIGTERM"); a Violation raised by the
    harness while cleaning up is the suite's fault."""
    if isinstance(exc, BaseExceptionGroup):
        # e.g. hypothesis' FlakyFailure: a finding that did not repeat on replay
        # (a timing-dependent bug) — the target's doing if every failure in it is.
        return all(target_failure(e, when) for e in exc.exceptions)
    if not isinstance(exc, Violation):
        return False
    return when != "teardown" or raised_in_check_code(exc)


def message(exc: BaseException) -> str:
    """The evidence line(s) of a failure: a Violation's message in full (it may
    carry a packet ladder), bounded; other exceptions with their type."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        inner = exc.exceptions[0]
        return f"{text}: {message(inner)}"[:6000]
    if not isinstance(exc, Violation):
        text = f"{type(exc).__name__}: {text}"
    # hypothesis puts the shrunk falsifying example (and the reproduce blob) in
    # the exception's notes: that is the evidence of a fuzz finding.
    notes = [str(n) for n in getattr(exc, "__notes__", ()) if str(n).strip()]
    if notes:
        text = text[:3000] + "\n" + "\n".join(notes)[:3000]
    return text[:6000]


def traceback_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= 20000 else "...\n" + text[-20000:]


def fuzzed(exc: BaseException) -> bool:
    """A failure that hypothesis found (and shrank): it carries the falsifying
    example in its notes."""
    # "Falsifying example" in older hypothesis, "Failing test case" in newer;
    # the reproduce_failure blob (print_blob) is in both.
    marks = ("Falsifying", "Failing test case", "reproduce_failure")
    return any(m in str(n) for n in getattr(exc, "__notes__", ()) for m in marks)


def clause_of_nodeid(nodeid: str, cache: dict[str, str | None]) -> str | None:
    """The clause a check (by node id, as xdist reports them to the controller)
    proves, read from its function's `clause` mark."""
    path, _, rest = nodeid.partition("::")
    name = rest.split("[")[0].split("::")[-1]
    key = f"{path}::{name}"
    if key not in cache:
        cache[key] = None
        stem = Path(path).stem
        if Path(path).parent.name == "checks":
            import importlib
            try:
                module = importlib.import_module(f"conformance.checks.{stem}")
            except ImportError:
                return None
            for m in getattr(getattr(module, name, None), "pytestmark", []):
                if getattr(m, "name", None) == "clause":
                    cache[key] = m.args[0]
    return cache[key]
