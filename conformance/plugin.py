"""The sockconf pytest plugin (entry point `pytest11: sockconf`).

Small hooks, in the spirit of pytest-timeout / pytest-xdist:
  * options `--sockconf-*` select the target, clauses, report and artifacts;
  * the `clause(ID)` marker ties each check to the clause it proves;
  * fixtures `sockconf_target`, `sockconf_isolation` (a private network namespace
    per worker) and `bed` (the per-check testbed);
  * outcomes are turned into clause verdicts on the controller (xdist-safe: the
    clause, evidence and artifacts travel in `report.user_properties`).
The plugin stays inert in pytest runs that collect no check.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import clauses as catalogue
from conformance import report as rep
from conformance.evidence import Inconclusive, Pass, Violation
from conformance.target import Target, TargetFileError, resolve

TARGET_KEY = pytest.StashKey[Target]()
RESULTS_KEY = pytest.StashKey[list[rep.ClauseResult]]()
NOT_RUN_KEY = pytest.StashKey[dict[str, str]]()

_PROPS = "sockconf"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sockconf", "sockconf conformance checks")
    g.addoption("--sockconf-target", metavar="FILE", help="target file (TOML) or built-in name")
    g.addoption("--sockconf-server", metavar="CMD", help='server command, e.g. "./srv {port}"')
    g.addoption("--sockconf-client", metavar="CMD", help='client command, e.g. "./cli {host} {port}"')
    g.addoption("--sockconf-profile", choices=["hello", "echo", "jsondoc"])
    g.addoption("--sockconf-clause", action="append", default=[], metavar="PATTERN",
                help="only clauses matching PATTERN (glob, e.g. LIFE-*); repeatable")
    g.addoption("--sockconf-test", action="append", default=[], metavar="NAME",
                help="only checks with this name (exact or glob, e.g. 'test_echo_fuzz[tcp4]'); "
                     "repeatable")
    g.addoption("--sockconf-strict", action="store_true", help="SHOULD failures make it non-conformant")
    g.addoption("--sockconf-report-json", metavar="FILE", help="write the clause report as JSON")
    g.addoption("--sockconf-artifacts", metavar="DIR", help="keep evidence of failures here")
    g.addoption("--sockconf-isolation", choices=["auto", "none"], default="auto",
                help="auto: a private network namespace per worker; none: host loopback")
    # Set by `sockconf check`: the command line a reproduce hint starts from.
    g.addoption("--sockconf-reproduce", metavar="CMD", help=argparse.SUPPRESS)


def _given(config: pytest.Config) -> bool:
    return any(config.getoption(o) for o in (
        "sockconf_target", "sockconf_server", "sockconf_client", "sockconf_profile",
        "sockconf_clause", "sockconf_test", "sockconf_report_json", "sockconf_artifacts"))


def _collects_checks(config: pytest.Config) -> bool:
    here = str(Path(__file__).parent)
    for arg in config.args:
        a = arg.split("::")[0]
        if a.startswith("conformance") or os.path.abspath(a).startswith(here):
            return True
    return False


def _register_hypothesis_profiles() -> None:
    """`--hypothesis-profile ci|dev|nightly` (INTERFACE.md): registered before
    hypothesis' own plugin loads the chosen profile."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - hypothesis is a dependency
        return
    # Checks drive real processes: examples are slow and data-heavy by nature, and a
    # server fixture is reused across examples on purpose.  database=None: a
    # conformance run never writes a .hypothesis/ folder into the user's cwd; a
    # finding is replayed from its seed (or derandomized profile) instead.
    slow = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large, HealthCheck.large_base_example]
    common: dict[str, Any] = {"deadline": None, "suppress_health_check": slow,
                              "print_blob": True, "database": None}
    # hypothesis still keeps a cache (.hypothesis/constants) in its home
    # directory, by default in the cwd: point it at this run's scratch dir.
    from hypothesis import configuration

    from conformance.harness.testbed import scratch
    configuration.set_hypothesis_home_dir(str(scratch("sockconf-hypothesis-")))
    settings.register_profile("ci", max_examples=25, derandomize=True, **common)
    settings.register_profile("dev", max_examples=100, **common)
    settings.register_profile("nightly", max_examples=5000, **common)


def _choose_hypothesis(config: pytest.Config) -> None:
    """The ci profile unless another is chosen; a seed always (given or drawn
    here), so that every fuzz finding's reproduce line names the seed that
    replays it.  Drawn on the controller; xdist workers re-parse the command
    line, so they get it through workerinput (pytest_configure_node)."""
    if not hasattr(config.option, "hypothesis_profile"):
        return
    if not config.option.hypothesis_profile:
        config.option.hypothesis_profile = "ci"
        from hypothesis import settings
        settings.load_profile("ci")
    if config.option.hypothesis_seed:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # xdist workers re-parse the command line: the controller's drawn seed
        # comes through workerinput (pytest_configure_node) instead.
        config.option.hypothesis_seed = workerinput.get("sockconf_hypothesis_seed")
    else:
        import random
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(1, 2**32))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    seed = getattr(node.config.option, "hypothesis_seed", None)
    if seed:
        node.workerinput["sockconf_hypothesis_seed"] = seed


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id): the REQUIREMENTS.md clause a check proves")
    config.addinivalue_line("markers", "sockconf_side(side): a check of the target's client")
    config.addinivalue_line("markers",
                            "sockconf_transports(*names): the transports a check applies to")
    active = _given(config) or _collects_checks(config)
    if not active:
        return
    _register_hypothesis_profiles()
    _choose_hypothesis(config)
    try:
        target = resolve(config.getoption("sockconf_target"), config.getoption("sockconf_server"),
                         config.getoption("sockconf_client"), config.getoption("sockconf_profile"))
    except TargetFileError as e:
        raise pytest.UsageError(f"sockconf: {e}") from None
    patterns = config.getoption("sockconf_clause")
    if patterns:
        applicable = catalogue.applicable(target.profile)
        for p in patterns:
            if not catalogue.select([p], applicable):
                raise pytest.UsageError(
                    f"sockconf: --clause {p} matches no clause of the {target.profile} profile")
    config.stash[TARGET_KEY] = target
    if not hasattr(config, "workerinput") and config.getoption("sockconf_isolation") == "auto":
        # A non-root user gets its own user+network namespace here, while the
        # controller is still single-threaded; xdist workers inherit it.
        from conformance.harness import netns
        netns.enter_user_namespace()


def _target(config: pytest.Config) -> Target:
    if TARGET_KEY not in config.stash:
        config.stash[TARGET_KEY] = resolve(None, None, None, None)
    return config.stash[TARGET_KEY]


# -- parametrization by declared transports --------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for arg, side in (("server_transport", "server"), ("client_transport", "client")):
        if arg in metafunc.fixturenames:
            prog = getattr(_target(metafunc.config), side)
            transports = list(prog.transports) if prog else ["none"]
            m = metafunc.definition.get_closest_marker("sockconf_transports")
            if m is not None and prog:
                transports = [t for t in transports if t in m.args]
                if not transports:
                    why = (f"the target declares none of the transports this check is about "
                           f"({', '.join(m.args)})")
                    metafunc.parametrize(arg, [pytest.param("none", marks=pytest.mark.skip(why))])
                    continue
            metafunc.parametrize(arg, transports)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if TARGET_KEY not in config.stash:
        return
    target = config.stash[TARGET_KEY]
    applicable = {c.id for c in catalogue.applicable(target.profile)}
    wanted = {c.id for c in catalogue.select(config.getoption("sockconf_clause"),
                                             catalogue.applicable(target.profile))}
    names = config.getoption("sockconf_test")
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    why_not: dict[str, str] = {}
    for item in items:
        m = item.get_closest_marker("clause")
        if m is None:
            keep.append(item)
            continue
        cid = m.args[0]
        if cid not in applicable or cid not in wanted or not _named(item, names):
            drop.append(item)
            continue
        client = item.get_closest_marker("sockconf_side") is not None
        prog = target.client if client else target.server
        if prog is None:
            # Not a skipped case: that side of the clause does not exist here.
            drop.append(item)
            why_not[cid] = f"the target declares no {'client' if client else 'server'}"
            continue
        keep.append(item)
    config.stash[NOT_RUN_KEY] = why_not
    if hasattr(config, "workeroutput"):
        # xdist: workers collect, the controller reports; this travels back to it
        # when the worker goes down (pytest_testnodedown).
        config.workeroutput["sockconf_not_run"] = why_not
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _named(item: pytest.Item, names: list[str]) -> bool:
    """--sockconf-test: a name or a glob of * and ?; brackets are literal, as in a
    parametrized name (fnmatch would read them as a character class)."""
    return not names or any(fnmatch.fnmatchcase(item.name, n.replace("[", "[[]")) for n in names)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    why_not = getattr(node, "workeroutput", {}).get("sockconf_not_run")
    if why_not:
        node.config.stash.setdefault(NOT_RUN_KEY, {}).update(why_not)


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sockconf_target(request: pytest.FixtureRequest) -> Target:
    return _target(request.config)


@pytest.fixture(scope="session")
def sockconf_isolation(request: pytest.FixtureRequest) -> Any:
    from conformance.harness import netns
    return netns.isolate(request.config.getoption("sockconf_isolation"))


@pytest.fixture
def bed(request: pytest.FixtureRequest, sockconf_target: Target,
        sockconf_isolation: Any) -> Iterator[Any]:
    from conformance.harness.testbed import Testbed, scratch
    workdir = Path(tempfile.mkdtemp(prefix="check-", dir=scratch()))
    tb = Testbed(sockconf_target, sockconf_isolation, workdir, name=request.node.name)
    request.node.stash[_BED_KEY] = tb
    try:
        yield tb
    finally:
        try:
            tb.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


_BED_KEY = pytest.StashKey[Any]()


# -- outcomes -------------------------------------------------------------------------------

def _target_failure(exc: BaseException) -> bool:
    """True when the exception is a judgement against the target (a Violation),
    False when the check itself broke (a sockconf bug → verdict `error`, exit 3).
    Nothing is guessed from exception types: an OSError or a failed assert of
    the suite's own is the suite's fault."""
    if isinstance(exc, BaseExceptionGroup):
        # e.g. hypothesis' FlakyFailure: a finding that did not repeat on replay
        # (a timing-dependent bug) — the target's doing if every failure in it is.
        return all(_target_failure(e) for e in exc.exceptions)
    return isinstance(exc, Violation)


JUDGEMENT_KEY = pytest.StashKey[Pass]()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a check and keep its judgement: a check returns a Pass (built from
    sound observations) or raises Violation / Inconclusive."""
    if pyfuncitem.get_closest_marker("clause") is None:
        return None
    args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
    result = pyfuncitem.obj(**args)
    if isinstance(result, Pass):
        pyfuncitem.stash[JUDGEMENT_KEY] = result
    elif result is not None:
        raise TypeError(f"a check returns a Pass or raises; {pyfuncitem.name} returned {result!r}")
    return True


def _reproduce(config: pytest.Config, clause_id: str, fuzz: str | None = None) -> str:
    """The command line that runs the failed clause again; for a fuzz finding
    (`fuzz`: the check's name) only that check, with its profile and seed."""
    base = config.getoption("sockconf_reproduce")
    if not base:
        parts = ["sockconf", "check"]
        for opt, flag in (("sockconf_target", None), ("sockconf_server", "--server"),
                          ("sockconf_client", "--client"), ("sockconf_profile", "--profile")):
            v = config.getoption(opt)
            if v:
                parts += ([flag] if flag else []) + [v]
        base = shlex.join(parts)
    line = f"{base} --clause {clause_id}"
    if fuzz:
        if "--test" not in base.split():
            line += f" --test {shlex.quote(fuzz)}"
        # The same profile and seed generate the same examples, so this line
        # replays the finding (and shrinks it again to the same minimal example).
        for opt in ("hypothesis_profile", "hypothesis_seed"):
            flag = "--" + opt.replace("_", "-")
            v = getattr(config.option, opt, None)
            if v and flag not in base.split():
                line += f" {flag} {shlex.quote(str(v))}"
    return line


def _fuzzed(exc: BaseException) -> bool:
    """A failure that hypothesis found (and shrank): it carries the falsifying
    example in its notes."""
    # "Falsifying example" in older hypothesis, "Failing test case" in newer;
    # the reproduce_failure blob (print_blob) is in both.
    marks = ("Falsifying", "Failing test case", "reproduce_failure")
    return any(m in str(n) for n in getattr(exc, "__notes__", ()) for m in marks)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    m = item.get_closest_marker("clause")
    if m is None:
        return
    cid = m.args[0]
    props: dict[str, Any] = {"clause": cid}
    exc = call.excinfo.value if call.excinfo else None
    if isinstance(exc, Inconclusive):
        # Nothing could be judged: a skip (with its kind) in pytest's terms.
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {exc.reason}")
        props["kind"] = exc.kind
    if report.failed and exc is not None:
        props["message"] = _message(exc)
        props["suite_error"] = not _target_failure(exc)
        props["reproduce"] = _reproduce(item.config, cid, item.name if _fuzzed(exc) else None)
        art = item.config.getoption("sockconf_artifacts")
        tb = item.stash.get(_BED_KEY, None)
        if art and tb is not None:
            from conformance.harness.testbed import slug
            dest = Path(art) / cid / slug(item.name)
            try:
                props["artifacts"] = tb.save_artifacts(dest)
                (dest / "reproduce.txt").write_text(props["reproduce"] + "\n")
                props["artifacts"].append(str(dest / "reproduce.txt"))
            except OSError as e:
                props["message"] += f" (artifacts not saved: {e})"
    elif report.skipped and isinstance(report.longrepr, tuple):
        props["message"] = str(report.longrepr[2]).removeprefix("Skipped: ")
    report.user_properties.append((_PROPS, props))


def _message(exc: BaseException) -> str:
    """The evidence line(s) of a failure: a Violation's message in full (it may
    carry a packet ladder), bounded; other exceptions with their type."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        inner = exc.exceptions[0]
        return f"{text}: {_message(inner)}"[:6000]
    if not isinstance(exc, Violation):
        text = f"{type(exc).__name__}: {text}"
    # hypothesis puts the shrunk falsifying example (and the reproduce blob) in
    # the exception's notes: that is the evidence of a fuzz finding.
    notes = [str(n) for n in getattr(exc, "__notes__", ()) if str(n).strip()]
    if notes:
        text = text[:3000] + "\n" + "\n".join(notes)[:3000]
    return text[:6000]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props: Any = next((v for k, v in report.user_properties if k == _PROPS), None)
    if props is None:
        return
    records = _records
    rec = records.get(report.nodeid)
    if rec is None:
        rec = records[report.nodeid] = rep.TestRecord(report.nodeid, props["clause"], "passed")
    rec.duration_s = round(rec.duration_s + report.duration, 3)
    if report.when == "call" and report.passed and rec.outcome == "passed":
        return
    if report.skipped:
        rec.outcome, rec.message = "skipped", props.get("message", "")
    elif report.failed:
        rec.outcome = "failed" if report.when == "call" else "error"
        rec.message = props.get("message", "")
        rec.suite_error = bool(props.get("suite_error"))
        rec.artifacts = props.get("artifacts", [])
        rec.reproduce = props.get("reproduce", "")


# Records live at module level: pytest_runtest_logreport has no config argument.
_records: dict[str, rep.TestRecord] = {}
# Check modules that failed to load (a sockconf bug): with any, there is no verdict.
_load_errors: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # xdist forwards its workers' failed collect reports to the controller here.
    if report.failed:
        lines = str(report.longrepr).strip().splitlines()
        _load_errors.append(f"{report.nodeid or 'collection'}: {lines[-1] if lines else '?'}")


def _results(config: pytest.Config) -> list[rep.ClauseResult] | None:
    if TARGET_KEY not in config.stash or hasattr(config, "workerinput"):
        return None
    if RESULTS_KEY in config.stash:
        return config.stash[RESULTS_KEY]
    target = config.stash[TARGET_KEY]
    clauses = catalogue.select(config.getoption("sockconf_clause"),
                               catalogue.applicable(target.profile))
    if config.getoption("sockconf_test"):
        # Only some checks were asked for: judge their clauses, not the rest as gaps.
        ran = {r.clause for r in _records.values()}
        clauses = [c for c in clauses if c.id in ran]
    gaps = {}
    for c in clauses:
        if c.option and (target.server is None or not target.server.supports(c.option)):
            gaps[c.id] = f"the target does not declare option {c.option!r}"
        elif c.option:
            gaps[c.id] = "no check implements this option clause yet"
    # Clauses whose checks were all deselected (e.g. client checks of a server-only
    # target) say why.  judge() uses these reasons only for clauses without records.
    for cid, why in config.stash.get(NOT_RUN_KEY, {}).items():
        gaps.setdefault(cid, why)
    results = rep.judge(clauses, _records.values(), gaps)
    config.stash[RESULTS_KEY] = results
    return results


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = _results(config)
    if not results:
        return
    target = config.stash[TARGET_KEY]
    terminalreporter.section("sockconf clause report")
    if _load_errors:
        # Clauses whose checks did not load would read "skip: no check": no verdict.
        terminalreporter.write_line("  SUITE ERROR (a bug in sockconf, no verdict): "
                                    "check module(s) failed to load:")
        for e in _load_errors:
            terminalreporter.write_line(f"    {e}")
        return
    for line in rep.terminal_lines(results, target=target.describe(),
                                   strict=config.getoption("sockconf_strict")):
        terminalreporter.write_line(line)
    path = config.getoption("sockconf_report_json")
    if path:
        terminalreporter.write_line(f"  report: {path}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    results = _results(config)
    if results is None:
        return
    if _load_errors:
        # pytest calls a collection error "interrupted" (2); it is the suite's own bug.
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR,
                      pytest.ExitCode.INTERNAL_ERROR):
        return
    target = config.stash[TARGET_KEY]
    strict = bool(config.getoption("sockconf_strict"))
    path = config.getoption("sockconf_report_json")
    if path:
        rep.write_json(path, rep.to_json(results, target=target.describe(), strict=strict))
    if not _records:
        # A selection that ran no check must never look like a pass.
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
    elif rep.suite_failed(results) or exitstatus not in (0, 1):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    else:
        session.exitstatus = 0 if rep.conformant(results, strict) else 1
