"""The testbed's servers and runs: signals reach the program (through a launcher that
does not exec, and under strace), a run is an honest observation, the harness raises
Inconclusive (never pytest.skip) when a check cannot run."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import target as targets
from conformance.evidence import Inconclusive, Pass
from conformance.harness import strace, syscalls
from conformance.harness.netns import Isolation
from conformance.harness.testbed import ClientRun, Testbed

HOST = Isolation(kind="host", wire=False, reason="the harness tests run without capture")
ECHO_SERVER = [sys.executable, "-m", "reference_impl.echo.server", "{port}"]
ROOT = Path(__file__).resolve().parents[2]


def _bed(tmp_path: Path, server: list[str] | None, client: list[str] | None = None,
         profile: str = "echo") -> Iterator[Testbed]:
    data: dict[str, object] = {"name": "harness test", "profile": profile}
    if server is not None:
        data["server"] = {"argv": server}
    if client is not None:
        data["client"] = {"argv": client}
    bed = Testbed(targets.from_mapping(data, base_dir=ROOT), HOST, tmp_path)
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
def echo_bed(tmp_path: Path) -> Iterator[Testbed]:
    yield from _bed(tmp_path, ECHO_SERVER)


@pytest.fixture
def launcher_bed(tmp_path: Path) -> Iterator[Testbed]:
    # A launcher that stays the server's parent and waits for it (no exec).
    yield from _bed(tmp_path, ["sh", "-c", " ".join(ECHO_SERVER) + "; exit $?"])


def test_sigterm_reaches_the_server_behind_a_launcher(launcher_bed: Testbed) -> None:
    srv = launcher_bed.start_server("tcp4")
    assert srv.listener is not None and srv.listener_pid != srv.pid
    server_pid = srv.listener_pid
    rc = srv.stop(signal.SIGTERM, 10.0)
    assert rc is not None, "the group did not end on SIGTERM"
    assert srv.proc.group_alive() == []
    assert not Path(f"/proc/{server_pid}").exists() or \
        Path(f"/proc/{server_pid}/stat").read_text().split(")")[1].split()[0] == "Z"


def test_a_traced_server_ends_through_its_own_handler(echo_bed: Testbed) -> None:
    """SIGTERM to a server run by strace reaches the program (strace blocks it),
    which ends by it: the trace shows the signal delivered to the program."""
    if strace.strace_path() is None:
        pytest.skip(strace.STRACE_HINT)
    srv = echo_bed.start_server("tcp4", trace=True)
    program = srv.listener_pid
    assert program != srv.pid  # strace is the spawned process
    rc = srv.stop(signal.SIGTERM, 10.0)
    assert rc is not None, "a traced server did not end on SIGTERM (the signal went to strace?)"
    assert srv.trace_log is not None
    t = syscalls.parse(srv.trace_log)
    assert any(s.name == "SIGTERM" and t.tgid(s.pid) == program for s in t.signals)


def test_inconclusive_not_pytest_skip(tmp_path: Path) -> None:
    for bed in _bed(tmp_path, None, ["true"], profile="hello"):
        with pytest.raises(Inconclusive, match="declares no server"):
            bed.start_server()
        with pytest.raises(Inconclusive, match="wire evidence unavailable"):
            bed.wire()
        with pytest.raises(Inconclusive, match="does not declare transport"):
            bed.require_transport(bed.client_program, "unix")


def test_a_run_is_an_observation(tmp_path: Path) -> None:
    """A finished run can back a Pass; one whose strace never ran the program
    cannot (its status would be strace's)."""
    for bed in _bed(tmp_path, ECHO_SERVER, ["sh", "-c", "echo hi; exit 3"], profile="hello"):
        run = bed.run(bed.client_argv("tcp4", 1))
        assert (run.rc, run.stdout, run.timed_out) == (3, b"hi\n", False)
        assert run.doubt() is None
        Pass("ran", run)
        never = ClientRun(run.proc, 1, False, trace_log=tmp_path / "missing.log")
        assert never.doubt() is not None
        with pytest.raises(Inconclusive, match="strace did not run the program"):
            Pass("ran", never)


def test_runs_are_matched_to_their_program(tmp_path: Path) -> None:
    """A usage run of the server (arguments dropped) is the server's, a client
    command line the client's: each gets its program's timeout_scale and env."""
    for bed in _bed(tmp_path, ["sh", "-c", "server", "{port}"],
                    ["sh", "-c", "client", "{host}", "{port}"], profile="hello"):
        assert bed.program_of(["sh", "-c", "server"]) is bed.target.server
        assert bed.program_of(bed.client_argv("tcp4", 1)) is bed.target.client


def test_env_and_timeout_scale_reach_the_program(tmp_path: Path) -> None:
    """A program's `env` is in its environment; its `timeout_scale` stretches
    every wait on it (here a client run's 0.2 s becomes 6 s)."""
    data = {"name": "harness test", "profile": "hello",
            "server": {"argv": ["sh", "-c", "server", "{port}"]},
            "client": {"argv": ["sh", "-c", 'sleep 0.5; echo "$SOCKCONF_TEST_VAR"', "{host}",
                                "{port}"], "env": {"SOCKCONF_TEST_VAR": "from the target"},
                       "timeout_scale": 30.0}}
    bed = Testbed(targets.from_mapping(data, base_dir=ROOT), HOST, tmp_path)
    try:
        run = bed.run(bed.client_argv("tcp4", 1), timeout=0.2)
        assert run.timeout_s == pytest.approx(6.0)
        assert (run.rc, run.stdout, run.timed_out) == (0, b"from the target\n", False)
    finally:
        bed.close()


def test_a_live_server_that_died_unseen_is_reported_not_restarted(echo_bed: Testbed) -> None:
    # A fuzz check's live server dies after an example was judged (no example
    # saw it): the next example reports it instead of getting a fresh server.
    from conformance.checks.fuzzing import LiveServer
    from conformance.evidence import Violation

    live = LiveServer(echo_bed, "tcp4")
    first = live.get()
    live.judged("b'abc' (echoed exactly)")
    first.kill()
    with pytest.raises(Violation, match=r"died between examples, after b'abc'"):
        live.get()
    again = live.get()            # reported once: the next example gets a new server
    assert again is not first and again.running() and live.restarts == 1
    again.kill()
    with pytest.raises(Violation, match="the server died"):
        live.require_alive("after an example", grace=5.0)
    assert live.get() is not again  # its death was reported by an example: restarted
