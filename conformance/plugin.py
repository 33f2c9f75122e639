"""The sockconf pytest plugin (entry point `pytest11: sockconf`).

Small hooks, in the spirit of pytest-timeout / pytest-xdist:
  * options `--sockconf-*` select the target, clauses, report and artifacts;
  * the `clause(ID)` marker ties each check to the clause it proves;
  * fixtures `sockconf_target`, `sockconf_isolation` (a private network namespace
    per worker) and `bed` (the per-check testbed);
  * judgements become outcomes (conformance/evidence.py): a returned `Pass` is a
    pass, a `Violation` fails the clause (warn for a SHOULD), `Inconclusive` is a
    skip of its kind, anything else is the suite's own `error` (exit status 3);
  * outcomes are turned into clause verdicts on the controller (xdist-safe: the
    clause, evidence and artifacts travel in `report.user_properties`).

Activation is explicit: the plugin acts only in a pytest session given a
`--sockconf-*` option (`sockconf check` always gives some).  Anywhere else — a
plain `pytest` of some project that happens to have sockconf installed, or of
sockconf's own tests — it only declares its options and markers: no hypothesis
profile is registered or loaded, no namespace is entered, no hook runs.  A session
that collects the checks without any `--sockconf-*` option is a usage error that
says which option to add (guessing activation from paths would switch it on for
sessions that did not ask).  The session's state lives in one `_Run` object,
registered as a plugin and kept on `config.stash`.
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
from conformance import hypothesis_setup, outcomes, render
from conformance import report as rep
from conformance.environment import describe_environment
from conformance.evidence import NOT_APPLICABLE, SKIP, Inconclusive, Pass
from conformance.scheduling import is_fuzz_check
from conformance.target import Target, TargetFileError, resolve

_PROPS = "sockconf"
# Check modules whose every check is about one profile's clauses (tested against
# their clause marks in tests/unit/test_scheduling.py); the others serve all profiles.
CAMPAIGN_LOG = "campaign.log"   # under --artifacts: a fuzz campaign's progress lines
PROFILE_MODULES = {"test_hello.py": "hello", "test_client.py": "hello",
                   "test_echo.py": "echo", "test_jsondoc.py": "jsondoc"}

# (flags, keyword arguments) of every option; `_given` reads the same list.
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--sockconf-target", {"metavar": "FILE", "help": "target file (TOML) or built-in name"}),
    ("--sockconf-server", {"metavar": "CMD", "help": 'server command, e.g. "./srv {port}"'}),
    ("--sockconf-client", {"metavar": "CMD", "help": 'client command, e.g. "./cli {host} {port}"'}),
    ("--sockconf-profile", {"choices": ["hello", "echo", "jsondoc"]}),
    ("--sockconf-clause", {"action": "append", "default": [], "metavar": "PATTERN",
                           "help": "only clauses matching PATTERN (glob, e.g. LIFE-*); repeatable"}),
    ("--sockconf-test", {"action": "append", "default": [], "metavar": "NAME",
                         "help": "only checks with this name (exact or glob, e.g. "
                                 "'test_echo_fuzz[tcp4]'); repeatable"}),
    ("--sockconf-strict", {"action": "store_true",
                           "help": "SHOULD failures make it non-conformant"}),
    ("--sockconf-require-complete", {"action": "store_true",
                                     "help": "a MUST clause left unjudged makes it exit 1"}),
    ("--sockconf-timeout-scale", {"metavar": "F", "type": float,
                                  "help": "multiply every wait on the target's programs by F "
                                          "(>= 1; on top of the target file's timeout_scale)"}),
    ("--sockconf-report-json", {"metavar": "FILE", "help": "write the clause report as JSON"}),
    ("--sockconf-junit-xml", {"metavar": "FILE",
                              "help": "write a JUnit XML file: one testcase per check, with "
                                      "clause, level and verdict properties"}),
    ("--sockconf-html", {"metavar": "FILE", "help": "write the report as one offline HTML page"}),
    ("--sockconf-artifacts", {"metavar": "DIR", "help": "keep evidence of failures here"}),
    ("--sockconf-hypothesis-profile", {"choices": list(hypothesis_setup.PROFILES),
                                       "help": "hypothesis profile of the fuzz checks "
                                               "(default ci; also --hypothesis-profile)"}),
    ("--sockconf-hypothesis-seed", {"metavar": "S", "help": "hypothesis seed (default: drawn "
                                                            "and reported; also "
                                                            "--hypothesis-seed)"}),
    ("--sockconf-fuzz-duration", {"metavar": "SECONDS", "type": float,
                                  "help": "a fuzz campaign: only the fuzz checks, each fuzzing "
                                          "in rounds until its share of SECONDS is used"}),
    ("--sockconf-hypothesis-db", {"metavar": "DIR",
                                  "help": "hypothesis' example database (a fuzz campaign's "
                                          "findings, replayed first); default: none"}),
    ("--sockconf-isolation", {"choices": ["auto", "none"],
                              "help": "auto (default): a private network namespace per worker; "
                                      "none: host loopback"}),
    # Set by `sockconf check`: the command line a reproduce hint starts from, and
    # a line per clause as its verdict becomes known instead of pytest's dots.
    ("--sockconf-reproduce", {"metavar": "CMD", "help": argparse.SUPPRESS}),
    ("--sockconf-progress", {"action": "store_true", "help": argparse.SUPPRESS}),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sockconf", "sockconf conformance checks")
    for flag, kwargs in _OPTIONS:
        g.addoption(flag, **kwargs)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _given(config: pytest.Config) -> bool:
    """True when any --sockconf-* option was given: the session asked for sockconf."""
    return any(config.getoption(_dest(flag)) not in (None, False, [])
               for flag, _ in _OPTIONS)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id): the REQUIREMENTS.md clause a check proves")
    config.addinivalue_line("markers", "sockconf_side(side): a check of the target's client")
    config.addinivalue_line("markers",
                            "sockconf_transports(*names): the transports a check applies to")
    config.addinivalue_line("markers", "sockconf_not_applicable(reason): this case does not "
                                       "apply to the target (set by the plugin)")
    if not _given(config):
        return
    run = _Run.start(config)
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, "sockconf-run")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if RUN_KEY in config.stash:
        return
    if any(item.get_closest_marker("clause") for item in items):
        raise pytest.UsageError(
            "sockconf: the conformance checks need a target: add --sockconf-target FILE, "
            "--sockconf-server/--sockconf-client CMD, or --sockconf-profile PROFILE (the "
            "built-in reference)")


# -- fixtures (used by the checks only; they need an active session) ---------------------------

def _run(config: pytest.Config) -> _Run:
    if RUN_KEY not in config.stash:
        raise pytest.UsageError("sockconf: no --sockconf-* option given (see --help)")
    return config.stash[RUN_KEY]


@pytest.fixture(scope="session")
def sockconf_target(request: pytest.FixtureRequest) -> Target:
    return _run(request.config).target


@pytest.fixture(scope="session")
def sockconf_isolation(request: pytest.FixtureRequest) -> Any:
    from conformance.harness import netns
    return netns.isolate(_run(request.config).isolation_mode)


@pytest.fixture
def bed(request: pytest.FixtureRequest, sockconf_target: Target,
        sockconf_isolation: Any) -> Iterator[Any]:
    from conformance.harness.testbed import Testbed, scratch
    workdir = Path(tempfile.mkdtemp(prefix="check-", dir=scratch()))
    tb = Testbed(sockconf_target, sockconf_isolation, workdir, name=request.node.name)
    request.node.stash[BED_KEY] = tb
    try:
        yield tb
    finally:
        try:
            tb.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


BED_KEY = pytest.StashKey[Any]()
JUDGEMENT_KEY = pytest.StashKey[Pass]()


def _named(item: pytest.Item, names: list[str]) -> bool:
    """--sockconf-test: a name or a glob of * and ?; brackets are literal, as in a
    parametrized name (fnmatch would read them as a character class)."""
    return not names or any(fnmatch.fnmatchcase(item.name, n.replace("[", "[[]")) for n in names)


class _Run:
    """One active sockconf session: its target, the records of the checks run,
    the clause verdicts, and the hooks that produce them."""

    def __init__(self, config: pytest.Config, target: Target) -> None:
        self.config = config
        self.target = target
        self.isolation_mode: str = config.getoption("sockconf_isolation") or "auto"
        self.records: dict[str, rep.TestRecord] = {}
        self.suite_errors: list[str] = []       # no verdict at all: modules not loaded, ...
        self.not_run: dict[str, str] = {}       # clause -> why its checks were deselected
        self.results: list[rep.ClauseResult] | None = None
        self.real_root = os.geteuid() == 0
        self.userns = False                     # the controller entered a user namespace
        self.isolations: list[Any] = []         # each worker's netns.Isolation
        # progress: tests per clause, and how many of them have ended
        self.expected: dict[str, int] = {}
        self.ended: dict[str, int] = {}
        self.progress = bool(config.getoption("sockconf_progress"))
        self.shown: set[str] = set()            # clauses whose progress line was written
        self._clause_cache: dict[str, str | None] = {}
        self.hypothesis = hypothesis_setup.HypothesisChoice("ci", "0")
        self.duration: float | None = config.getoption("sockconf_fuzz_duration")

    @classmethod
    def start(cls, config: pytest.Config) -> _Run:
        duration = config.getoption("sockconf_fuzz_duration")
        database = config.getoption("sockconf_hypothesis_db")
        if duration is not None:
            art = config.getoption("sockconf_artifacts")
            if not art:
                raise pytest.UsageError("sockconf: a fuzz campaign needs --sockconf-artifacts "
                                        "(its example database and progress log live there)")
            database = database or hypothesis_setup.database_dir(art)
        choice = hypothesis_setup.choose(
            config.option, getattr(config, "workerinput", None),
            profile=config.getoption("sockconf_hypothesis_profile"),
            seed=config.getoption("sockconf_hypothesis_seed"),
            database=database, campaign=duration is not None)
        hypothesis_setup.lazily(choice)
        try:
            target = resolve(config.getoption("sockconf_target"),
                             config.getoption("sockconf_server"),
                             config.getoption("sockconf_client"),
                             config.getoption("sockconf_profile"))
            scale = config.getoption("sockconf_timeout_scale")
            if scale is not None:
                target = target.scaled(scale)
        except TargetFileError as e:
            raise pytest.UsageError(f"sockconf: {e}") from None
        patterns = config.getoption("sockconf_clause")
        if patterns:
            applicable = catalogue.applicable(target.profile)
            for p in patterns:
                if not catalogue.select([p], applicable):
                    raise pytest.UsageError(
                        f"sockconf: --clause {p} matches no clause of the {target.profile} profile")
        run = cls(config, target)
        run.hypothesis = choice
        if not hasattr(config, "workerinput") and run.isolation_mode == "auto":
            # A non-root user gets its own user+network namespace here, while the
            # controller is still single-threaded; xdist workers inherit it.
            from conformance.harness import netns
            run.userns = netns.enter_user_namespace()
        return run

    @property
    def controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    # -- session start: what must hold before any check runs ---------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.progress:
            # xdist's "bringing up nodes..." status lines: the clause lines are the
            # progress (a crashed worker still shows, as its check's `error`).
            dist = self.config.pluginmanager.get_plugin("terminaldistreporter")
            if dist is not None:
                self.config.pluginmanager.unregister(dist)
        art = self.config.getoption("sockconf_artifacts")
        if art and self.controller:
            why = _unwritable(Path(art))
            if why:
                # The suite cannot keep the evidence it was asked to keep: its own
                # fault (exit 3), found before any check runs, not after a failure.
                msg = f"--artifacts {art}: {why}"
                self.suite_errors.append(msg)
                pytest.exit(f"sockconf: SUITE ERROR (not the target's fault; exit status 3): "
                            f"{msg}", returncode=pytest.ExitCode.INTERNAL_ERROR)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["sockconf_hypothesis_seed"] = self.hypothesis.seed

    # -- collection ---------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        for arg, side in (("server_transport", "server"), ("client_transport", "client")):
            if arg in metafunc.fixturenames:
                prog = getattr(self.target, side)
                transports = list(prog.transports) if prog else ["none"]
                m = metafunc.definition.get_closest_marker("sockconf_transports")
                if m is not None and prog:
                    transports = [t for t in transports if t in m.args]
                    if not transports:
                        why = (f"the target declares none of the transports this check is "
                               f"about ({', '.join(m.args)})")
                        mark = pytest.mark.sockconf_not_applicable(why)
                        metafunc.parametrize(arg, [pytest.param("none", marks=mark)])
                        continue
                metafunc.parametrize(arg, transports)

    def pytest_ignore_collect(self, collection_path: Path, config: pytest.Config) -> bool | None:
        """A module whose checks are all about another profile's clauses is not
        even imported (test_jsondoc.py imports hypothesis: ~0.1-1 s per process)."""
        profile = PROFILE_MODULES.get(collection_path.name)
        if (profile is not None and profile != self.target.profile
                and collection_path.parent == outcomes.CHECKS_DIR):
            return True
        return None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """xdist's load scheduling, but its first checks dealt one at a time
        round-robin: the long checks at the head of the collection (`run_order`)
        then start first on different workers, not all on the first one."""
        if config.getoption("dist", None) != "load":
            return None
        from conformance.scheduling import long_first_scheduler
        return long_first_scheduler(config, log)

    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        applicable = catalogue.applicable(self.target.profile)
        applicable_ids = {c.id for c in applicable}
        wanted = {c.id for c in catalogue.select(config.getoption("sockconf_clause"), applicable)}
        names = config.getoption("sockconf_test")
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            m = item.get_closest_marker("clause")
            if m is None:
                keep.append(item)
                continue
            cid = m.args[0]
            if cid not in applicable_ids or cid not in wanted or not _named(item, names):
                drop.append(item)
                continue
            if self.duration is not None and not is_fuzz_check(item):
                drop.append(item)   # a campaign fuzzes; the other checks are for `check`
                continue
            client = item.get_closest_marker("sockconf_side") is not None
            prog = self.target.client if client else self.target.server
            if prog is None:
                # Not a skipped case: that side of the clause does not exist here.
                drop.append(item)
                self.not_run[cid] = f"the target declares no {'client' if client else 'server'}"
                continue
            keep.append(item)
        if hasattr(config, "workeroutput"):
            # xdist: workers collect, the controller reports; this travels back to it
            # when the worker goes down (pytest_testnodedown).
            config.workeroutput["sockconf_not_run"] = self.not_run
        if drop:
            config.hook.pytest_deselected(items=drop)
        # The long checks first (a stable sort: the rest keep pytest's order), so
        # that no worker starts one when the others are done.
        from conformance.scheduling import run_order
        keep.sort(key=run_order)
        items[:] = keep
        for item in keep:
            m = item.get_closest_marker("clause")
            if m is not None:
                self.expected[m.args[0]] = self.expected.get(m.args[0], 0) + 1
        if self.duration is not None:
            self._plan_campaign(config, len(keep))

    def _plan_campaign(self, config: pytest.Config, checks: int) -> None:
        """Each fuzz check's share of the campaign: the checks run `workers` at a
        time, so each may fuzz duration * workers / checks seconds."""
        from conformance.checks import campaign
        workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
        assert self.duration is not None
        campaign.PLAN.seconds = self.duration * min(workers, max(checks, 1)) / max(checks, 1)
        campaign.PLAN.log = Path(config.getoption("sockconf_artifacts")) / CAMPAIGN_LOG

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # The controller does not collect under xdist: count each clause's checks
        # from the first worker's node ids (all workers collect the same).
        if self.expected:
            return
        for nodeid in ids:
            cid = outcomes.clause_of_nodeid(nodeid, self._clause_cache)
            if cid is not None:
                self.expected[cid] = self.expected.get(cid, 0) + 1

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # xdist forwards its workers' failed collect reports to the controller here.
        if report.failed:
            lines = str(report.longrepr).strip().splitlines()
            self.suite_errors.append(f"{report.nodeid or 'collection'}: "
                                     f"{lines[-1] if lines else '?'} (a check module failed "
                                     f"to load)")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        out = getattr(node, "workeroutput", {})
        self.not_run.update(out.get("sockconf_not_run") or {})
        iso = out.get("sockconf_isolation")
        if iso:
            self.isolations.append(iso)

    # -- running a check ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.duration is not None:
            from conformance.checks import campaign
            m = item.get_closest_marker("clause")
            campaign.PLAN.check = f"{m.args[0] if m else '?'} {item.name}"
        m = item.get_closest_marker("sockconf_not_applicable")
        if m is not None:
            raise Inconclusive(m.args[0], NOT_APPLICABLE)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """Run a check and keep its judgement: a check returns a Pass (built from
        sound observations) or raises Violation / Inconclusive."""
        if pyfuncitem.get_closest_marker("clause") is None:
            return None
        args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        result = pyfuncitem.obj(**args)
        if isinstance(result, Pass):
            pyfuncitem.stash[JUDGEMENT_KEY] = result
        elif result is not None:
            raise TypeError(f"a check returns a Pass or raises; {pyfuncitem.name} "
                            f"returned {result!r}")
        else:
            # Returning without a judgement is not a pass: nothing was proven.
            raise outcomes.NoJudgement(
                f"check ended without a judgement: {pyfuncitem.name} returned None (a check "
                "returns Pass(...) or raises Violation/Inconclusive)")
        return True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
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
            props["message"] = outcomes.message(exc)
            if not outcomes.target_failure(exc, call.when):
                props["suite_error"] = True
                props["traceback"] = outcomes.traceback_text(exc)
            props["reproduce"] = _reproduce(item.config, cid,
                                            item.name if outcomes.fuzzed(exc) else None)
            self._save_artifacts(item, cid, props)
        elif report.skipped and isinstance(report.longrepr, tuple):
            props["message"] = str(report.longrepr[2]).removeprefix("Skipped: ")
            props.setdefault("kind", SKIP)
        elif call.when == "call" and report.passed and JUDGEMENT_KEY in item.stash:
            # A pass carries its evidence into the report, as a failure does.
            props["message"] = item.stash[JUDGEMENT_KEY].evidence[:2000]
        if call.when == "teardown" and not self.controller:
            self._worker_isolation()
        report.user_properties.append((_PROPS, props))

    def _save_artifacts(self, item: pytest.Item, cid: str, props: dict[str, Any]) -> None:
        """Keep the evidence of a failed check under --artifacts.  Failing to keep
        it is the suite's error (exit 3), never folded into the target's verdict."""
        art = item.config.getoption("sockconf_artifacts")
        tb = item.stash.get(BED_KEY, None)
        if not art or tb is None:
            return
        from conformance.harness.testbed import slug
        dest = Path(art) / cid / slug(item.name)
        try:
            props["artifacts"] = tb.save_artifacts(dest)
            (dest / "reproduce.txt").write_text(props["reproduce"] + "\n")
            props["artifacts"].append(str(dest / "reproduce.txt"))
        except OSError as e:
            props["suite_error"] = True
            props["message"] = (f"sockconf could not save the artifacts to {dest}: {e}\n"
                                f"(the check's own outcome: {props['message']})")
            props["traceback"] = props.get("traceback", "") + outcomes.traceback_text(e)

    def _worker_isolation(self) -> None:
        from conformance.harness import netns
        iso = netns.current()
        if iso is not None and hasattr(self.config, "workeroutput"):
            self.config.workeroutput["sockconf_isolation"] = {
                "kind": iso.kind, "wire": iso.wire, "reason": iso.reason}

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config
                                 ) -> tuple[str, str, str] | None:
        # Under `sockconf check` (not -v) the clause lines are the progress:
        # no dots and letters of pytest's for the checks.
        if self.progress and any(k == _PROPS for k, _ in getattr(report, "user_properties", ())):
            return report.outcome, "", ""
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.controller:
            return
        props: Any = next((v for k, v in report.user_properties if k == _PROPS), None)
        if props is None and report.failed:
            props = self._crashed(report)
        if props is None:
            return
        rec = self.records.get(report.nodeid)
        if rec is None:
            rec = self.records[report.nodeid] = rep.TestRecord(report.nodeid, props["clause"],
                                                               "passed")
        rec.duration_s = round(rec.duration_s + report.duration, 3)
        if report.passed and report.when == "call":
            rec.message = props.get("message", "")
        elif report.skipped:
            rec.outcome, rec.message = "skipped", props.get("message", "")
            rec.kind = props.get("kind", SKIP)
        elif report.failed:
            if rec.outcome != "failed":
                rec.outcome = "failed" if report.when == "call" else "error"
            msg = props.get("message", "")
            rec.message = f"{rec.message}\n{msg}".strip() if rec.message else msg
            rec.suite_error = rec.suite_error or bool(props.get("suite_error"))
            if props.get("traceback"):
                rec.traceback = (rec.traceback + "\n" + props["traceback"]).strip()
            rec.artifacts = rec.artifacts or props.get("artifacts", [])
            rec.reproduce = rec.reproduce or props.get("reproduce", "")
        if report.when == "teardown":
            self._ended(rec.clause)

    def _crashed(self, report: pytest.TestReport) -> dict[str, Any] | None:
        """A failed report the plugin did not make: an xdist worker died while
        running a check (the suite's error: the check was never judged)."""
        cid = outcomes.clause_of_nodeid(report.nodeid, self._clause_cache)
        if cid is None:
            if report.when == "???":   # xdist's mark of a crash report
                # A check of unknown clause died with its worker: no verdict at all
                # rather than a clause judged without it.
                self.suite_errors.append(f"{report.longrepr}")
            return None
        return {"clause": cid, "suite_error": True, "message": str(report.longrepr),
                "traceback": str(report.longrepr)}

    def _ended(self, cid: str) -> None:
        """A check ended: when it was its clause's last, show the clause's verdict."""
        self.ended[cid] = self.ended.get(cid, 0) + 1
        if not self.progress or self.ended[cid] != self.expected.get(cid):
            return
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        (result,) = rep.judge([catalogue.BY_ID[cid]],
                              [r for r in self.records.values() if r.clause == cid],
                              self._gaps())
        tr.write_line(rep.clause_line(result, _ID_WIDTH))
        self.shown.add(cid)

    # -- verdicts -----------------------------------------------------------------------------

    def _gaps(self) -> dict[str, tuple[str, str]]:
        gaps: dict[str, tuple[str, str]] = {}
        # An option applies when either side declares it ([server.options] or the
        # hello client's [client.options]).
        declared = {o for p in (self.target.server, self.target.client) if p is not None
                    for o in p.options}
        for c in catalogue.CATALOGUE:
            if c.option and c.option not in declared:
                gaps[c.id] = (f"the target does not declare option {c.option!r}", NOT_APPLICABLE)
            elif c.option:
                gaps[c.id] = ("no check implements this option clause yet", SKIP)
        # Clauses whose checks were all deselected (e.g. client checks of a server-only
        # target) say why; judge() uses these reasons only for clauses without records.
        for cid, why in self.not_run.items():
            gaps.setdefault(cid, (why, NOT_APPLICABLE))
        return gaps

    def verdicts(self) -> list[rep.ClauseResult] | None:
        if not self.controller:
            return None
        if self.results is not None:
            return self.results
        clauses = catalogue.select(self.config.getoption("sockconf_clause"),
                                   catalogue.applicable(self.target.profile))
        if self.config.getoption("sockconf_test") or self.duration is not None:
            # Only some checks were asked for: judge their clauses, not the rest as gaps.
            ran = {r.clause for r in self.records.values()}
            clauses = [c for c in clauses if c.id in ran]
        self.results = rep.judge(clauses, self.records.values(), self._gaps())
        return self.results

    def environment(self) -> dict[str, Any]:
        from conformance.harness import netns
        iso = netns.current()
        found = self.isolations[0] if self.isolations else (
            {"kind": iso.kind, "wire": iso.wire, "reason": iso.reason} if iso else None)
        return describe_environment(
            isolation=found, isolation_mode=self.isolation_mode, userns=self.userns,
            root=self.real_root,
            hypothesis_profile=self.hypothesis.profile, hypothesis_seed=self.hypothesis.seed)

    def document(self, results: list[rep.ClauseResult]) -> dict[str, Any]:
        doc = rep.to_json(results, target=self.target.describe(),
                          strict=bool(self.config.getoption("sockconf_strict")),
                          environment=self.environment())
        doc["reproduce"] = _base_command(self.config)
        return doc

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int,
                                config: pytest.Config) -> None:
        results = self.verdicts()
        if results is None:
            return
        if self.progress and not self.suite_errors:
            # The clauses no check ended for (gaps, deselected sides) come last.
            for r in results:
                if r.clause.id not in self.shown:
                    terminalreporter.write_line(rep.clause_line(r, _ID_WIDTH))
        terminalreporter.section("sockconf clause report")
        if self.suite_errors:
            # Clauses whose checks did not load would read "skip: no check": no verdict.
            terminalreporter.write_line("  SUITE ERROR (a fault of sockconf, no verdict):")
            for e in self.suite_errors:
                terminalreporter.write_line(f"    {e}")
            return
        for line in rep.terminal_lines(results, target=self.target.describe(),
                                       strict=config.getoption("sockconf_strict"),
                                       clauses=not self.progress):
            terminalreporter.write_line(line)
        for r in results:
            for t in r.tests:
                if t.suite_error and t.traceback:
                    last = t.traceback.strip().splitlines()[-1]
                    terminalreporter.write_line(f"  error in {t.nodeid}: {last[:200]}")
        for opt, what in (("sockconf_report_json", "report"), ("sockconf_junit_xml", "junit"),
                          ("sockconf_html", "html")):
            path = config.getoption(opt)
            if path:
                terminalreporter.write_line(f"  {what}: {path}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        results = self.verdicts()
        if results is None:
            return
        if self.suite_errors:
            # pytest calls a collection error "interrupted" (2); it is the suite's own bug.
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR,
                          pytest.ExitCode.INTERNAL_ERROR):
            return
        strict = bool(self.config.getoption("sockconf_strict"))
        doc = self.document(results)
        try:
            _write_outputs(self.config, doc)
        except OSError as e:
            self.suite_errors.append(f"could not write the report: {e}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        if not self.records:
            # A selection that ran no check must never look like a pass.
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        elif rep.suite_failed(results) or exitstatus not in (0, 1):
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif not rep.conformant(results, strict):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif self.config.getoption("sockconf_require_complete") and not rep.complete(results):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            session.exitstatus = pytest.ExitCode.OK


RUN_KEY = pytest.StashKey[_Run]()
_ID_WIDTH = max(len(c.id) for c in catalogue.CATALOGUE)


def _write_outputs(config: pytest.Config, doc: dict[str, Any]) -> None:
    path = config.getoption("sockconf_report_json")
    if path:
        rep.write_json(path, doc)
    junit = config.getoption("sockconf_junit_xml")
    if junit:
        render.write_junit(junit, doc)
    page = config.getoption("sockconf_html")
    if page:
        render.write_html(page, doc)


def _unwritable(d: Path) -> str | None:
    """Why files cannot be written under directory `d`, or None when they can."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".sockconf-probe-"):
            pass
    except OSError as e:
        return f"cannot write there: {e.strerror or e}"
    return None


def _base_command(config: pytest.Config) -> str:
    """The command line that runs this check run again."""
    base = config.getoption("sockconf_reproduce")
    if base:
        return str(base)
    parts = ["sockconf", "check"]
    for opt, flag in (("sockconf_target", None), ("sockconf_server", "--server"),
                      ("sockconf_client", "--client"), ("sockconf_profile", "--profile")):
        v = config.getoption(opt)
        if v:
            parts += ([flag] if flag else []) + [v]
    return shlex.join(parts)


def _reproduce(config: pytest.Config, clause_id: str, fuzz: str | None = None) -> str:
    """The command line that runs the failed clause again; for a fuzz finding
    (`fuzz`: the check's name) only that check, with its profile and seed."""
    base = _base_command(config)
    line = f"{base} --clause {clause_id}"
    if fuzz:
        if "--test" not in base.split():
            line += f" --test {shlex.quote(fuzz)}"
        # The same profile and seed generate the same examples, so this line
        # replays the finding (and shrinks it again to the same minimal example).
        choice = config.stash[RUN_KEY].hypothesis
        # A campaign's finding is in its example database: the line names it,
        # and the replay starts from it.
        # (The seed replays a finding only when no database is in use: hypothesis
        # forces no seed then.)
        for flag, v in (("--hypothesis-profile", choice.profile),
                        ("--hypothesis-seed", None if choice.database else choice.seed),
                        ("--hypothesis-db", choice.database)):
            if v and flag not in base.split():
                line += f" {flag} {shlex.quote(str(v))}"
    return line
