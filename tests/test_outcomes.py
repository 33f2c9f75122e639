"""Judgements → outcomes, end to end through the plugin: throwaway checks (in a
temporary folder, run by a real pytest process with the plugin) that pass, raise
Violation / Inconclusive of each kind, or break like a harness does (OSError, a
bare assert, a Violation raised while cleaning up).  The suite's own faults must
come out as `error` with exit status 3, never as the target's `fail`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conformance import outcomes
from conformance.evidence import Violation

HEADER = """
import pytest
from conformance.clauses import clause, transports
from conformance.evidence import Inconclusive, Pass, Violation
"""


def _run(tmp_path: Path, checks: str, *clauses: str, extra: tuple[str, ...] = ()
         ) -> tuple[int, str, dict[str, Any]]:
    (tmp_path / "test_throwaway.py").write_text(HEADER + textwrap.dedent(checks))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
           "--rootdir", str(tmp_path), str(tmp_path / "test_throwaway.py"),
           "--sockconf-profile", "hello", "--sockconf-isolation", "none",
           "--sockconf-report-json", str(out), *extra]
    for c in clauses:
        cmd += ["--sockconf-clause", c]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    doc = json.loads(out.read_text()) if out.exists() else {}
    return res.returncode, res.stdout + res.stderr, doc


def _verdicts(doc: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in doc["clauses"]}


MIXED = """
@clause("HELLO-1")
def test_harness_oserror():
    raise OSError(24, "Too many open files")

@clause("HELLO-2")
def test_target_violation():
    raise Violation("expected 13 bytes, saw 12: b'Hello World!\\x00'")

@clause("HELLO-3")
def test_judged():
    return Pass("client data changed nothing")

@clause("HELLO-3")
def test_option_not_declared():
    raise Inconclusive("the target does not declare option 'oobinline'", "not-applicable")

@clause("HELLO-3")
@transports("udp4")
def test_udp_only(server_transport):
    raise Violation("a case of a transport the target does not declare must not run")

@clause("LIFE-1")
def test_not_for_this_target():
    raise Inconclusive("the target declares no udp4 transport", "not-applicable")

@clause("LIFE-2")
def test_bare_assert():
    assert 1 + 1 == 3, "a type-narrowing assert of the suite"
"""


def test_harness_faults_are_errors_and_not_applicable_never_lowers(tmp_path: Path) -> None:
    rc, out, doc = _run(tmp_path, MIXED, "HELLO-*", "LIFE-1", "LIFE-2",
                        extra=("--sockconf-junit-xml", str(tmp_path / "j.xml"),
                               "--sockconf-html", str(tmp_path / "r.html"),
                               "--sockconf-progress", "-qq"))
    assert rc == 3, out
    assert _verdicts(doc) == {"LIFE-1": "skip", "LIFE-2": "error", "HELLO-1": "error",
                              "HELLO-2": "fail", "HELLO-3": "pass"}
    assert doc["summary"]["error"] == 2 and doc["summary"]["fail"] == 1
    # A failure was seen, so not conformant; not-applicable left nothing unjudged.
    assert doc["conformant"] is False and doc["complete"] is True
    by_id = {c["id"]: c for c in doc["clauses"]}
    (oserror,) = by_id["HELLO-1"]["tests"]
    assert oserror["verdict"] == "error" and oserror["suite_error"] is True
    assert "Too many open files" in oserror["traceback"]
    assert "test_harness_oserror" in oserror["traceback"]
    (violation,) = by_id["HELLO-2"]["tests"]
    assert violation["verdict"] == "fail" and "traceback" not in violation
    udp = next(t for t in by_id["HELLO-3"]["tests"] if "test_udp_only" in t["nodeid"])
    assert udp["kind"] == "not-applicable" and "declares none of the transports" in udp["message"]
    assert by_id["LIFE-1"]["reason"] == "the target declares no udp4 transport"
    assert by_id["LIFE-1"]["not_applicable"] is True
    # The progress lines: one per clause with its verdict, no pytest dots.
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ")]
    assert ["HELLO-1", "MUST", "ERROR"] in [ln[:3] for ln in lines], out
    assert ["HELLO-3", "MUST", "PASS"] in [ln[:3] for ln in lines], out
    assert "NOT CONFORMANT, SUITE ERROR in 2 clauses" in out

    _check_junit(tmp_path / "j.xml", doc)
    _check_html(tmp_path / "r.html", doc)


def _check_junit(path: Path, doc: dict[str, Any]) -> None:
    """The usual JUnit layout (testsuites > testsuite > testcase, counts that add
    up, at most one of failure/error/skipped per case), every case carrying its
    clause, level and verdict as properties."""
    root = ET.parse(path).getroot()        # well-formed, despite the NUL in a message
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests", -1)) == len(cases) == sum(
        max(1, len(c["tests"])) for c in doc["clauses"])
    outcome: dict[str, int] = {"failure": 0, "error": 0, "skipped": 0}
    for case in cases:
        assert case.get("classname") and case.get("name") and float(case.get("time", "x")) >= 0
        props = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
        assert set(props) == {"clause", "level", "verdict"}
        assert props["clause"] == case.get("classname")
        kinds = [el.tag for el in case if el.tag in outcome]
        assert len(kinds) <= 1
        for k in kinds:
            outcome[k] += 1
        expected = {"error": ["error"], "fail": ["failure"], "skip": ["skipped"],
                    "pass": []}[props["verdict"]]
        assert kinds == expected, (props, kinds)
    assert int(suite.get("failures", -1)) == outcome["failure"] == 1
    assert int(suite.get("errors", -1)) == outcome["error"] == 2
    assert int(suite.get("skipped", -1)) == outcome["skipped"]


class _Tags(HTMLParser):
    VOID = {"meta", "br", "link", "img", "hr", "input"}
    OPTIONAL_END = {"html", "tr", "td", "th", "p"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v or "" for k, v in attrs if k in ("href", "src")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack[-1] != tag and self.stack[-1] in self.OPTIONAL_END:
            self.stack.pop()
        assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        self.stack.pop()


def _check_html(path: Path, doc: dict[str, Any]) -> None:
    text = path.read_text()
    tags = _Tags()
    tags.feed(text)
    tags.close()
    assert not [t for t in tags.stack if t not in _Tags.OPTIONAL_END], tags.stack
    # Self-contained: nothing is fetched (no scripts, styles or images from anywhere).
    assert "<script" not in text and not [r for r in tags.refs if "://" in r]
    for c in doc["clauses"]:
        assert f'id="{c["id"]}"' in text
    assert "Too many open files" in text and "NOT CONFORMANT" in text


def test_skip_makes_the_run_incomplete_and_require_complete_exit_1(tmp_path: Path) -> None:
    checks = """
    @clause("HELLO-1")
    def test_passes():
        return Pass("13 bytes, then FIN")

    @clause("HELLO-2")
    def test_cannot_run_here():
        raise Inconclusive("strace is not installed (apt-get install strace)")
    """
    rc, out, doc = _run(tmp_path, checks, "HELLO-1", "HELLO-2")
    assert rc == 0, out
    assert doc["complete"] is False and doc["conformant"] is True
    assert ("CONFORMANT, INCOMPLETE: 1 MUST clause not judged (HELLO-2: strace is not "
            "installed (apt-get install strace))") in out
    rc, out, doc = _run(tmp_path, checks, "HELLO-1", "HELLO-2",
                        extra=("--sockconf-require-complete",))
    assert rc == 1, out
    assert doc["complete"] is False


def test_artifacts_kept_and_a_failure_to_keep_them_is_an_error(tmp_path: Path) -> None:
    # The testbed's save_artifacts stands in for a harness that writes the
    # evidence: once it works (files linked from the report), once the disk is
    # full — which must be the suite's error, not folded into the target's fail.
    art = tmp_path / "art"
    checks = """
    from pathlib import Path
    from conformance import plugin

    class Bed:
        def __init__(self, full):
            self.full = full
        def save_artifacts(self, dest):
            if self.full:
                raise OSError(28, "No space left on device")
            dest.mkdir(parents=True, exist_ok=True)
            (dest / "server.stderr").write_text("boom")
            return [str(dest / "server.stderr")]

    @clause("HELLO-1")
    def test_fails_with_evidence(request):
        request.node.stash[plugin.BED_KEY] = Bed(full=False)
        raise Violation("expected 13 bytes, saw 12")

    @clause("HELLO-2")
    def test_fails_on_a_full_disk(request):
        request.node.stash[plugin.BED_KEY] = Bed(full=True)
        raise Violation("greeting came late")
    """
    rc, out, doc = _run(tmp_path, checks, "HELLO-1", "HELLO-2",
                        extra=("--sockconf-artifacts", str(art),
                               "--sockconf-html", str(tmp_path / "page" / "r.html")))
    assert rc == 3, out
    assert _verdicts(doc) == {"HELLO-1": "fail", "HELLO-2": "error"}
    (kept,) = doc["clauses"][0]["tests"]
    assert [Path(a).name for a in kept["artifacts"]] == ["server.stderr", "reproduce.txt"]
    assert Path(kept["artifacts"][1]).read_text().strip() == kept["reproduce"]
    (lost,) = doc["clauses"][1]["tests"]
    assert "No space left on device" in lost["message"] and "greeting came late" in lost["message"]
    page = (tmp_path / "page" / "r.html").read_text()
    assert 'href="../art/HELLO-1/test_fails_with_evidence/server.stderr"' in page


def test_a_worker_that_dies_in_a_check_is_a_suite_error(tmp_path: Path) -> None:
    checks = """
    import os

    @clause("HELLO-1")
    def test_dies():
        os._exit(17)

    @clause("HELLO-1")
    def test_passes():
        return Pass("13 bytes, then FIN")
    """
    rc, out, doc = _run(tmp_path, checks, "HELLO-1", extra=("-n", "1"))
    assert rc == 3, out
    assert "crashed" in out and "CONFORMANT" not in out.replace("NOT CONFORMANT", ""), out


def test_harness_violation_in_teardown_is_an_error(tmp_path: Path) -> None:
    # The fixture stands for the harness: its Violation while cleaning up is not
    # a judgement of the target (only a check's own code may judge in teardown).
    checks = """
    @pytest.fixture
    def harness():
        yield
        raise Violation("cleanup found the process gone")

    @clause("HELLO-1")
    def test_passes(harness):
        return Pass("13 bytes, then FIN")
    """
    rc, out, doc = _run(tmp_path, checks, "HELLO-1")
    assert rc == 3, out
    assert _verdicts(doc) == {"HELLO-1": "error"}


def test_violation_in_teardown_counts_only_from_check_code() -> None:
    def raised_from(filename: str) -> BaseException:
        code = compile("def judge():\n    raise Violation('server did not end')\n", filename,
                       "exec")
        scope: dict[str, Any] = {"Violation": Violation}
        exec(code, scope)
        try:
            scope["judge"]()
        except Violation as e:
            return e
        raise AssertionError("no Violation raised")

    from_check = raised_from(str(outcomes.CHECKS_DIR / "test_life.py"))
    from_harness = raised_from(str(outcomes.CHECKS_DIR.parent / "harness" / "process.py"))
    assert outcomes.target_failure(from_check, "teardown")
    assert not outcomes.target_failure(from_harness, "teardown")
    assert outcomes.target_failure(from_harness, "call")     # in the check's call: judged
    assert not outcomes.target_failure(OSError(28, "No space left on device"), "call")


def test_a_check_without_a_judgement_is_an_error(tmp_path: Path) -> None:
    # A check that returns None has judged nothing: the suite's error, never a pass.
    checks = """
    @clause("HELLO-1")
    def test_forgot_to_judge():
        pass

    @clause("HELLO-2")
    def test_judged():
        return Pass("greeting before any client data")
    """
    rc, out, doc = _run(tmp_path, checks, "HELLO-1", "HELLO-2")
    assert rc == 3, out
    assert _verdicts(doc) == {"HELLO-1": "error", "HELLO-2": "pass"}
    (test,) = doc["clauses"][0]["tests"]
    assert "check ended without a judgement" in test["message"]


def test_a_plain_pytest_session_is_left_alone(tmp_path: Path) -> None:
    # No --sockconf-* option: the plugin does nothing (no hypothesis profile, no
    # namespace, no report), and collecting the checks says which option is missing.
    (tmp_path / "test_plain.py").write_text(
        "import pytest\n"
        "from hypothesis import settings\n"
        "from hypothesis.errors import InvalidArgument\n"
        "def test_profile():\n"
        "    with pytest.raises(InvalidArgument):\n"
        "        settings.get_profile('nightly')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c",
            str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path)]
    res = subprocess.run([*base, str(tmp_path / "test_plain.py")], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sockconf clause report" not in res.stdout
    (tmp_path / "test_throwaway.py").write_text(HEADER + "@clause('HELLO-1')\ndef test_x():\n"
                                                "    return Pass('x')\n")
    res = subprocess.run([*base, str(tmp_path / "test_throwaway.py")], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "--sockconf-target" in res.stdout + res.stderr


@pytest.mark.parametrize("scale", ["0.5", "x"])
def test_bad_timeout_scale_is_exit_2(tmp_path: Path, scale: str) -> None:
    res = subprocess.run([sys.executable, "-m", "conformance", "check", "reference-hello",
                          "--timeout-scale", scale], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "timeout-scale" in res.stderr
    if scale == "0.5":   # ours: one line (argparse prints its usage for "x")
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_emfile_in_the_suite_is_an_error_not_the_targets_failure(tmp_path: Path) -> None:
    # Every socket() of the suite's own process fails with EMFILE (strace fault
    # injection on sockconf itself, not on the target: no -f): the check cannot
    # be carried out, which is sockconf's error (exit 3), never a `fail`.
    import shutil
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    out = tmp_path / "r.json"
    res = subprocess.run(
        [strace, "-o", "/dev/null", "-e", "trace=socket", "-e", "inject=socket:error=EMFILE",
         sys.executable, "-m", "conformance", "check", "reference-hello", "--clause", "ERR-2",
         "-n", "0", "--report-json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert _verdicts(doc) == {"ERR-2": "error"}
    (test,) = doc["clauses"][0]["tests"]
    assert "Too many open files" in test["message"] and test["traceback"]
    assert doc["conformant"] is False
