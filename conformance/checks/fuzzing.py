"""Property checks with hypothesis against a live server: the run, its bound on
shrinking, and what it judged.

A fuzz check counts what it judged: each example that reached a verdict calls
:meth:`Fuzz.judged`; one that cannot be judged (the server does not even do the
simpler thing another clause is about) calls :meth:`Fuzz.reject`, which
``hypothesis.reject()``s it, so it neither passes nor counts.  :meth:`Fuzz.run`
returns a ``Pass`` that says how many examples were judged, and raises
``Inconclusive`` when none was.

Shrinking is bounded (SHRINK_S, by hypothesis profile) through
``hypothesis.internal.conjecture.engine.MAX_SHRINKING_SECONDS``: hypothesis has
no setting for it and documents that module constant as the knob to patch
("make it monkeypatchable, for the rare users who need to keep on shrinking").
It is not public API, so pyproject.toml pins hypothesis below 7 and
tests/unit/test_fuzzing.py checks that the knob exists and bounds the shrinker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn

from conformance.checks import campaign
from conformance.evidence import Inconclusive, Pass, Violation
from conformance.harness.testbed import Server, Testbed

# How long hypothesis may shrink a failure of one of our fuzz checks, by profile:
# the default ci profile keeps a broken target's run short, the longer ones get
# a smaller example.
SHRINK_S = {"ci": 30, "dev": 60, "nightly": 300}


def shrink_seconds() -> int:
    """The shrink bound of the hypothesis profile in use."""
    from hypothesis import settings

    # (get_current_profile_name is recent hypothesis; older ones get the ci bound.)
    profile = getattr(settings, "get_current_profile_name", lambda: "ci")()
    return SHRINK_S.get(profile, 60)


class Fuzz:
    """What one fuzz check judged: examples that reached a verdict, and those
    rejected because they could not be judged."""

    def __init__(self, what: str = "examples") -> None:
        self.what = what
        self.count = 0
        self.rejected = 0
        self.reasons: list[str] = []

    def judged(self, n: int = 1) -> None:
        self.count += n

    def reject(self, reason: str) -> NoReturn:
        """This example cannot be judged (say why): hypothesis draws another."""
        from hypothesis import note, reject

        self.rejected += 1
        if len(self.reasons) < 3 and reason not in self.reasons:
            self.reasons.append(reason)
        note(f"not judged: {reason}")
        reject()

    def run(self, test: Callable[[], None], evidence: str) -> Pass:
        """Run a hypothesis test; a Pass saying how many {what} were judged.

        A failure that does not happen again when hypothesis replays it (a
        nondeterministic server) is still the target's failure: it is reported
        as such, not as a suite error."""
        from hypothesis.errors import FailedHealthCheck, FlakyFailure, Unsatisfiable
        from hypothesis.internal.conjecture import engine

        saved = engine.MAX_SHRINKING_SECONDS
        engine.MAX_SHRINKING_SECONDS = shrink_seconds()
        try:
            # Once, or in rounds for a campaign's time (checks/campaign.py).
            campaign.run(test, lambda: self.count, self.what)
        except FlakyFailure as e:
            seen = next((x for x in e.exceptions if isinstance(x, Violation)), None)
            if seen is None:
                raise
            once = Violation(f"{seen} (this happened, but not again when hypothesis replayed "
                             "the same requests: the server behaves nondeterministically)")
            for note in getattr(seen, "__notes__", []):
                once.add_note(note)
            raise once from e
        except (Unsatisfiable, FailedHealthCheck):
            if not self.rejected:
                raise
            raise Inconclusive(self._nothing_judged()) from None
        finally:
            engine.MAX_SHRINKING_SECONDS = saved
        if not self.count:
            raise Inconclusive(self._nothing_judged())
        rejected = f" ({self.rejected} not judged: {self.reasons[0]})" if self.rejected else ""
        return Pass(f"{evidence}: {self.count} {self.what} judged{rejected}")

    def _nothing_judged(self) -> str:
        why = "; ".join(self.reasons) or "no example ran"
        return (f"{self.count} of {self.count + self.rejected} {self.what} could be judged: "
                f"{why}")


class LiveServer:
    """One running server shared by a fuzz check's examples; restarted when an
    example killed it (the example that saw it dead reports it), so shrinking
    stays meaningful."""

    def __init__(self, bed: Testbed, transport: str) -> None:
        self.bed, self.transport = bed, transport
        self.srv: Server | None = None
        self.restarts = 0
        self.death_reported = False  # an example reported the current server's death
        self.last = "none yet"       # the last example judged on it (judged())

    def get(self) -> Server:
        if self.srv is not None and self.srv.proc.poll() is None:
            return self.srv
        if self.srv is not None:
            if not self.death_reported:
                # It died after an example that had already been judged (a crash
                # reaped later than that example looked): never absorbed by a
                # silent restart.  This example reports it; if the replay does not
                # repeat it, it is reported as nondeterministic, still a failure.
                self.death_reported = True
                raise Violation(f"the server died between examples, after {self.last} was "
                                f"judged: {self.srv.proc.status()}; stderr "
                                f"{self.srv.proc.stderr()[-200:]!r}")
            self.restarts += 1
            self.death_reported = False
            if self.srv.path:
                try:
                    os.unlink(self.srv.path)   # the dead server's socket file
                except OSError:
                    pass
        name = "server" if self.srv is None else f"restarted-server-{self.restarts}"
        self.srv = self.bed.start_server(self.transport, name=name)
        return self.srv

    def judged(self, example: str) -> None:
        """`example` was judged on the live server (named if it dies later)."""
        self.last = example

    def require_alive(self, what: str, grace: float = 0.02) -> None:
        """Violation if the server has died; a crash caused by the last exchange
        may take a moment to be reaped: `grace` s (0: only look, as a check that
        sees a death in its next exchange anyway does after each example)."""
        if self.srv is None:
            raise RuntimeError("require_alive() before any server was started")
        if self.srv.proc.wait(grace) is not None:
            self.death_reported = True
            raise Violation(f"{what}: the server died: {self.srv.proc.status()}; "
                            f"stderr {self.srv.proc.stderr()[-200:]!r}")
