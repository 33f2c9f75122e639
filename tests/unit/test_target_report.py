"""Unit tests of the pure parts: clause catalogue, target model, verdict rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance import clauses, report
from conformance.target import TargetFileError, builtin, from_commands, load_file, resolve

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "REQUIREMENTS.md"


def test_catalogue_matches_requirements_ids() -> None:
    if not SPEC.exists():
        pytest.skip("../shared/spec/REQUIREMENTS.md not present beside the checkout")
    text = SPEC.read_text()
    ids = set(re.findall(r"\*\*((?:ARGS|ERR|LIFE|HELLO|CLI|ECHO|JSON)-\d+|OPT-[A-Z]+) "
                         r"(MUST|SHOULD)\*\*", text))
    ours = {(c.id, c.level) for c in clauses.CATALOGUE}
    assert ours == ids


def test_catalogue_matches_the_restated_spec() -> None:
    """conformance/SPEC.md (in the repository, so this runs also where ../shared
    is absent, as in CI) restates every clause under a `### ID (LEVEL)` heading."""
    text = (Path(clauses.__file__).parent / "SPEC.md").read_text()
    restated = set(re.findall(r"^### ([A-Z]+-[A-Z0-9]+) \((MUST|SHOULD)\)$", text, re.M))
    assert restated == {(c.id, c.level) for c in clauses.CATALOGUE}


def test_clause_decorator_rejects_unknown_ids() -> None:
    with pytest.raises(ValueError):
        clauses.clause("LIFE-99")


def test_select_globs() -> None:
    hello = clauses.applicable("hello")
    assert [c.id for c in clauses.select(["life-[0-2]"], hello)] == ["LIFE-0", "LIFE-1", "LIFE-2"]
    assert clauses.select([], hello) == hello
    assert not any(c.id.startswith("ECHO") for c in hello)


def test_target_file_paths_options_and_placeholders(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text('name = "x"\nprofile = "hello"\n[server]\nargv = ["./srv", "{port}"]\n'
                 'transports = ["tcp4", "unix"]\n[server.transport_argv]\nunix = ["./srv", "-u", "{path}"]\n'
                 '[server.options]\nlinger = ["--linger", "{seconds}"]\nreuseaddr = []\n')
    t = load_file(f)
    assert t.base_dir == tmp_path and t.server is not None
    assert t.command(t.server, port=5, options={"linger": {"seconds": 0}}) == ["./srv", "5", "--linger", "0"]
    assert t.command(t.server, transport="unix", path="/tmp/s") == ["./srv", "-u", "/tmp/s"]
    assert t.server.supports("reuseaddr") and not t.server.supports("keepalive")
    with pytest.raises(TargetFileError):
        t.command(t.server, port=5, options={"keepalive": {}})


def test_command_strings_split_like_a_shell() -> None:
    t = from_commands("'./my server' {port} --flag", "./cli {host} {port}", None)
    assert t.profile == "hello" and t.server and t.client
    assert t.command(t.server, port=7) == ["./my server", "7", "--flag"]
    with pytest.raises(TargetFileError):
        from_commands("./srv {prot}", None, "hello")
    with pytest.raises(TargetFileError):
        from_commands("'unterminated", None, "hello")


def test_resolve_precedence_and_builtin() -> None:
    assert resolve(None, None, None, None).name == builtin("reference-hello").name
    with pytest.raises(TargetFileError):
        resolve("x.toml", "./srv {port}", None, None)
    with pytest.raises(TargetFileError):
        builtin("nope")


def _rec(cid: str, outcome: str, suite_error: bool = False, kind: str = "",
         message: str = "") -> report.TestRecord:
    return report.TestRecord(f"n::{cid}::{outcome}{kind}", cid, outcome, suite_error=suite_error,
                             kind=kind, message=message)


def test_verdict_is_worst_outcome_and_gaps_are_skips() -> None:
    cat = [clauses.BY_ID[i] for i in ("LIFE-4", "LIFE-5", "HELLO-1", "CLI-1", "LIFE-0")]
    results = report.judge(cat, [
        _rec("LIFE-4", "passed"), _rec("LIFE-4", "failed"),       # MUST fail
        _rec("LIFE-5", "failed"),                                  # SHOULD: warn
        _rec("HELLO-1", "passed"), _rec("HELLO-1", "skipped"),     # partly unverified: skip
        _rec("LIFE-0", "failed", suite_error=True),                # our bug: error
    ])
    v = {r.clause.id: r.verdict for r in results}
    assert v == {"LIFE-4": "fail", "LIFE-5": "warn", "HELLO-1": "skip", "CLI-1": "skip",
                 "LIFE-0": "error"}
    assert report.conformant(results, strict=False) is False
    assert report.suite_failed(results)
    only_warn = report.judge([clauses.BY_ID["LIFE-5"]], [_rec("LIFE-5", "failed")])
    assert report.conformant(only_warn, strict=False)
    assert not report.conformant(only_warn, strict=True)
    doc = report.to_json(results, target={"name": "t", "profile": "hello", "file": None}, strict=False)
    assert doc["summary"] == {"pass": 0, "fail": 1, "warn": 1, "skip": 2, "not-testable": 0,
                              "error": 1}
    gap = next(c for c in doc["clauses"] if c["id"] == "CLI-1")
    assert gap["tests"] == [] and "no check" in gap["reason"]
    assert doc["complete"] is False     # HELLO-1, CLI-1: MUST clauses not judged


def test_error_outranks_fail_and_leaves_conformance_unknown() -> None:
    life4 = [clauses.BY_ID["LIFE-4"]]
    both = report.judge(life4, [_rec("LIFE-4", "failed"), _rec("LIFE-4", "error", True)])
    assert both[0].verdict == "error"
    # A failure elsewhere still makes the run non-conformant; an error alone
    # leaves it unknown (None), never "conformant".
    assert report.conformant(both + report.judge([clauses.BY_ID["LIFE-1"]],
                                                 [_rec("LIFE-1", "failed")]), False) is False
    assert report.conformant(both, strict=False) is None
    line = report.terminal_lines(both, target={"name": "t", "profile": "hello"}, strict=False)[-1]
    assert "NO VERDICT" in line and "SUITE ERROR" in line


def test_not_applicable_never_lowers_a_judged_clause() -> None:
    echo5, life4 = clauses.BY_ID["ECHO-5"], clauses.BY_ID["LIFE-4"]
    na = "the target does not declare option 'oobinline'"
    results = report.judge([echo5, life4], [
        _rec("ECHO-5", "passed"), _rec("ECHO-5", "skipped", kind="not-applicable", message=na),
        _rec("LIFE-4", "skipped", kind="not-applicable", message=na),
    ])
    assert [r.verdict for r in results] == ["pass", "skip"]
    assert results[1].reason == na and results[1].not_applicable
    # Nothing that applies was left unjudged: the run is complete.
    assert report.complete(results)
    # A real skip of a MUST clause is not: INCOMPLETE, with the reason.
    skipped = report.judge([life4], [_rec("LIFE-4", "skipped", kind="skip",
                                          message="strace is not installed")])
    assert not report.complete(skipped)
    last = report.terminal_lines(skipped, target={"name": "t", "profile": "hello"},
                                 strict=False)[-1]
    assert last.strip() == ("CONFORMANT, INCOMPLETE: 1 MUST clause not judged "
                            "(LIFE-4: strace is not installed)")
    # A gap the target does not declare is not-applicable; one of the suite's is not.
    gaps = report.judge([clauses.BY_ID["OPT-LINGER"], clauses.BY_ID["OPT-DEBUG"]], [], {
        "OPT-LINGER": ("the target does not declare option 'linger'", "not-applicable"),
        "OPT-DEBUG": ("no check implements this option clause yet", "skip")})
    assert [r.unjudged for r in gaps] == [False, True]


def test_combine_keeps_completeness_and_environment() -> None:
    env = {"kernel": "6.1", "strace": None}
    life4 = [clauses.BY_ID["LIFE-4"]]
    one = report.to_json(report.judge(life4, [_rec("LIFE-4", "passed")]),
                         target={"name": "a", "profile": "hello", "file": None}, strict=False,
                         environment=env)
    two = report.to_json(report.judge(life4, [_rec("LIFE-4", "skipped", kind="skip")]),
                         target={"name": "a", "profile": "echo", "file": None}, strict=False,
                         environment=env)
    doc = report.combine({"hello": one, "echo": two}, strict=False)
    assert doc["complete"] is False and doc["environment"] == env
    assert doc["summary"]["skip"] == 1 and doc["conformant"] is True
    assert "INCOMPLETE" in report.headline_of(doc)


def test_target_env_and_timeout_scale(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text('profile = "hello"\n[server]\nargv = ["./srv", "{port}"]\ntimeout_scale = 3\n'
                 '[server.env]\nJAVA_OPTS = "-Xmx64m"\n[client]\nargv = ["./cli"]\n')
    t = load_file(f)
    assert t.server is not None and t.client is not None
    assert t.server.env == {"JAVA_OPTS": "-Xmx64m"} and t.server.timeout_scale == 3.0
    assert t.client.env == {} and t.client.timeout_scale == 1.0
    scaled = t.scaled(2)
    assert scaled.server is not None and scaled.client is not None
    assert scaled.server.timeout_scale == 6.0 and scaled.client.timeout_scale == 2.0
    with pytest.raises(TargetFileError, match="--timeout-scale"):
        t.scaled(0.5)
    for bad, needle in (("timeout_scale = 0.5", "timeout_scale must be a number from 1"),
                        ("timeout_scale = 'x'", "timeout_scale must be a number from 1"),
                        ("env = 'A=1'", "env] must be a table"),
                        ("env = {A = 1}", "env.A must be a string"),
                        ("env = {'A=B' = '1'}", "not an environment variable name")):
        f.write_text(f'profile = "hello"\n[server]\nargv = ["./srv"]\n{bad}\n')
        with pytest.raises(TargetFileError, match=re.escape(needle)):
            load_file(f)


def test_check_runs_on_every_core_by_default_and_shows_clause_lines() -> None:
    from conformance import cli

    def args(*argv: str) -> list[str]:
        return cli._pytest_args(cli._parser().parse_args(["check", *argv]))

    default = args()
    assert default[default.index("-n") + 1] == "auto" and "--sockconf-progress" in default
    one = args("-n", "0", "-v", "--require-complete", "--timeout-scale", "2",
               "--junit-xml", "j.xml", "--html", "r.html")
    assert one[one.index("-n") + 1] == "0"
    assert "--sockconf-progress" not in one and "-v" in one      # pytest's own detail
    for flag, value in (("--sockconf-timeout-scale", "2.0"), ("--sockconf-junit-xml", "j.xml"),
                        ("--sockconf-html", "r.html")):
        assert one[one.index(flag) + 1] == value
    assert "--sockconf-require-complete" in one


def test_clause_of_a_check_from_its_node_id() -> None:
    # How the xdist controller (which does not collect) places a check's report.
    from conformance.outcomes import clause_of_nodeid as _clause_of_nodeid
    cache: dict[str, str | None] = {}
    assert _clause_of_nodeid("checks/test_hello.py::test_exact_greeting[tcp4]", cache) == "HELLO-1"
    assert _clause_of_nodeid("../x/conformance/checks/test_life.py::test_server_syscall_order",
                             cache) == "LIFE-0"
    assert _clause_of_nodeid("tests/test_other.py::test_x", cache) is None
