"""The `sockconf` command as a user meets it: exit codes, selection, the JSON
report's contract, artifacts and the reproduce command, the pytest-plugin route,
external binaries, cleanup after normal ends and Ctrl-C, and non-root runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.clauses import applicable
from tests.helpers import HELLO, sockconf


def _build(out: Path, *names: str) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc)")
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        subprocess.run([cc, "-O1", "-o", str(out / n), str(HELLO / "src" / f"{n}.c")],
                       check=True, timeout=120)
    return out


def _target_file(d: Path, server: str = "good_server", client: str = "good_client") -> Path:
    t = d / "target.toml"
    t.write_text(f'name = "t"\nprofile = "hello"\n[server]\nargv = ["./{server}", "{{port}}"]\n'
                 f'[client]\nargv = ["./{client}", "{{host}}", "{{port}}"]\n')
    return t


# -- exit status 2: usage and target-file errors ----------------------------------------------

@pytest.mark.parametrize("content,needle", [
    ("profile = 'hello'\n[server]\nargv = 'x'\n", "argv must be a list"),
    ("profile = 'smtp'\n[server]\nargv = ['x']\n", "profile must be one of"),
    ("profile = 'hello'\n[server]\nargv = ['x', '{prot}']\n", "unknown placeholder"),
    ("profile = 'hello'\n[server]\nargv = ['x']\ntransports = ['udp4']\n", "not a hello transport"),
    ("profile = 'hello'\n[server]\nargv = ['x']\n[server.options]\nturbo = []\n", "unknown option"),
    ("profile = 'hello\n", "not valid TOML"),
    ("profile = 'hello'\n", "needs a [server] or [client]"),
])
def test_bad_target_file_is_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    t = tmp_path / "bad.toml"
    t.write_text(content)
    res = sockconf("check", str(t), tmp_path=tmp_path, report=False)
    assert res.rc == 2, res.explain()
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_missing_target_file_is_exit_2(tmp_path: Path) -> None:
    res = sockconf("check", str(tmp_path / "nope.toml"), tmp_path=tmp_path, report=False)
    assert res.rc == 2 and "cannot read target file" in res.stderr


def test_clause_matching_nothing_is_exit_2(tmp_path: Path) -> None:
    res = sockconf("check", "--clause", "NOPE-*", tmp_path=tmp_path, report=False)
    assert res.rc == 2, res.explain()
    assert "matches no clause" in res.stdout + res.stderr


def test_selection_that_runs_no_check_is_exit_2_not_a_pass(tmp_path: Path) -> None:
    # CLI-1 applies to the hello profile, but its checks are of the client, which
    # this server-only target does not have: nothing ran, so no verdict at all.
    res = sockconf("check", "--server", "sockconf-hello-server {port}", "--profile", "hello",
                   "--clause", "CLI-1", tmp_path=tmp_path)
    assert res.rc == 2, res.explain()


def test_test_option_selects_checks_by_name(tmp_path: Path) -> None:
    # Brackets are literal (a parametrized name), * and ? are globs; only the
    # clauses of the selected checks are reported.
    res = sockconf("check", "--profile", "echo", "--test", "test_every_byte_back[tcp4-one-byte]",
                   "test_half_close[unix-*]", tmp_path=tmp_path)
    assert res.rc == 0, res.explain()
    doc = res.report or {}
    assert [c["id"] for c in doc["clauses"]] == ["ECHO-1", "ECHO-2"]
    names = sorted(t["nodeid"].split("::")[-1] for c in doc["clauses"] for t in c["tests"])
    assert names == ["test_every_byte_back[tcp4-one-byte]", "test_half_close[unix-1MiB]",
                     "test_half_close[unix-8MiB]", "test_half_close[unix-nothing]",
                     "test_half_close[unix-small]"], names
    assert sockconf("check", "--profile", "echo", "--test", "test_nothing_by_this_name",
                    tmp_path=tmp_path).rc == 2
    assert sockconf("check", "--test", "test_echo_fuzz[tcp4]", tmp_path=tmp_path).rc == 2


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_check_module_that_fails_to_load_is_a_suite_error(tmp_path: Path, workers: str) -> None:
    # pytest calls a collection error "interrupted"; for sockconf it is its own bug
    # (exit 3), and the clauses whose checks did not load must not read "skip".
    broken = tmp_path / "test_broken_check.py"
    broken.write_text("import sockconf_no_such_module\n")
    res = sockconf("check", "--profile", "hello", "--clause", "HELLO-1", "-n", workers,
                   "--pytest-arg", str(broken), tmp_path=tmp_path)
    assert res.rc == 3, res.explain()
    assert "SUITE ERROR" in res.stdout and "sockconf_no_such_module" in res.stdout, res.stdout
    assert "CONFORMANT" not in res.stdout, res.stdout

def test_targets_lists_the_reference(tmp_path: Path) -> None:
    res = sockconf("targets", tmp_path=tmp_path, report=False)
    assert res.rc == 0 and "reference-hello" in res.stdout


# -- the report's contract ----------------------------------------------------------------------

def test_report_json_contract(tmp_path: Path) -> None:
    res = sockconf("check", "--clause", "HELLO-*", "LIFE-1", tmp_path=tmp_path)
    assert res.rc == 0, res.explain()
    doc = res.report
    assert doc is not None
    assert set(doc) >= {"tool", "version", "target", "strict", "complete", "environment",
                        "conformant", "summary", "clauses"}
    assert doc["tool"] == "sockconf" and doc["conformant"] is True and doc["strict"] is False
    assert doc["complete"] is True
    env = doc["environment"]
    assert set(env) >= {"sockconf", "kernel", "strace", "isolation", "capture", "root",
                        "hypothesis_profile", "hypothesis_seed"}
    assert env["isolation"] in ("netns", "user+netns", "host") and env["root"] is (os.geteuid() == 0)
    assert env["kernel"] == os.uname().release and env["hypothesis_profile"] == "ci"
    assert set(doc["target"]) >= {"name", "profile", "file"}
    assert set(doc["summary"]) == {"pass", "fail", "warn", "skip", "not-testable", "error"}
    assert sum(doc["summary"].values()) == len(doc["clauses"])
    ids = [c["id"] for c in doc["clauses"]]
    assert ids == ["LIFE-1", "HELLO-1", "HELLO-2", "HELLO-3"]
    # A line per clause with its verdict (the progress), no pytest dots or warnings.
    shown = {ln.split()[0]: ln.split()[2] for ln in res.stdout.splitlines()
             if ln.startswith("  ") and len(ln.split()) > 2 and ln.split()[0] in ids}
    assert shown == dict.fromkeys(ids, "PASS"), res.stdout
    assert "warning" not in res.stdout.lower() and "..." not in res.stdout.replace(
        "bringing up nodes...", ""), res.stdout
    for c in doc["clauses"]:
        assert set(c) >= {"id", "level", "title", "verdict", "tests"}
        assert c["verdict"] == "pass"
        for t in c["tests"]:
            assert set(t) >= {"nodeid", "outcome", "duration_s", "message", "artifacts", "reproduce"}
            assert t["verdict"] == "pass"
            if c["id"] == "LIFE-1":
                # A pass carries its evidence, as a failure does.
                assert "listens on" in t["message"], t


def test_unwritable_artifacts_dir_is_a_suite_error(tmp_path: Path) -> None:
    # The suite cannot keep the evidence it was asked for: its fault (exit 3),
    # said before any check runs — never a verdict on the target.
    res = sockconf("check", "reference-hello", "--clause", "ARGS-1", "--artifacts",
                   "/proc/forbidden", tmp_path=tmp_path)
    assert res.rc == 3, res.explain()
    assert "/proc/forbidden" in res.stdout + res.stderr
    assert res.report is None


def test_junit_and_html_from_check(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET
    res = sockconf("check", "--clause", "HELLO-1", "--junit-xml", str(tmp_path / "j.xml"),
                   "--html", str(tmp_path / "r.html"), tmp_path=tmp_path)
    assert res.rc == 0, res.explain()
    cases = ET.parse(tmp_path / "j.xml").getroot().findall("testsuite/testcase")
    assert cases and all(
        {p.get("name"): p.get("value") for p in c.findall("properties/property")}
        == {"clause": "HELLO-1", "level": "MUST", "verdict": "pass"} for c in cases)
    page = (tmp_path / "r.html").read_text()
    assert 'id="HELLO-1"' in page and "sockconf check" in page


def test_full_report_lists_every_hello_clause(tmp_path: Path) -> None:
    res = sockconf("check", "--clause", "ARGS-1", tmp_path=tmp_path)
    assert res.rc == 0
    # Selection narrows the report; without it every applicable clause is listed.
    assert [c["id"] for c in (res.report or {})["clauses"]] == ["ARGS-1"]
    full = {c.id for c in applicable("hello")}
    assert "OPT-LINGER" in full and "ECHO-1" not in full


# -- artifacts and reproduce ------------------------------------------------------------------------

def test_failure_evidence_and_reproduce(tmp_path: Path) -> None:
    d = _build(tmp_path / "bin", "m_life4_rst", "good_client")
    target = _target_file(d, server="m_life4_rst")
    art = tmp_path / "art"
    res = sockconf("check", str(target), "--clause", "LIFE-4", "--artifacts", str(art),
                   tmp_path=tmp_path)
    assert res.rc == 1, res.explain()
    (clause,) = (res.report or {})["clauses"]
    assert clause["verdict"] == "fail"
    (test,) = clause["tests"]
    assert "RST" in test["message"]
    files = [Path(p) for p in test["artifacts"]]
    assert all(f.exists() for f in files)
    assert any(f.suffix == ".pcap" for f in files)
    assert any(f.suffix == ".stderr" for f in files)
    from scapy.all import TCP, rdpcap  # evidence must open in standard tools
    pcap = next(f for f in files if f.suffix == ".pcap")
    assert any(p.haslayer(TCP) and "R" in str(p[TCP].flags) for p in rdpcap(str(pcap)))
    # The reproduce command, run as printed, reproduces the failure.
    argv = shlex.split(test["reproduce"])
    assert argv[:2] == ["sockconf", "check"]
    again = subprocess.run([sys.executable, "-m", "conformance", *argv[1:]], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 1, again.stdout


# -- external binaries, the pytest route -------------------------------------------------------------

def test_external_binaries_by_command_line(tmp_path: Path) -> None:
    d = _build(tmp_path / "elsewhere", "good_server", "good_client")
    res = subprocess.run(
        [sys.executable, "-m", "conformance", "check", "--server", "./good_server {port}",
         "--client", "./good_client {host} {port}", "--profile", "hello",
         "--report-json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=600, cwd=d)
    assert res.returncode == 0, res.stdout[-4000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["fail"] == 0 and doc["summary"]["pass"] >= 20


def test_pytest_plugin_route(tmp_path: Path) -> None:
    d = _build(tmp_path / "bin", "good_server", "good_client")
    target = _target_file(d)
    junit = tmp_path / "junit.xml"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "conformance", "-p", "no:cacheprovider",
         "--sockconf-target", str(target), "-k", "greeting", "--junitxml", str(junit), "-q"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "sockconf clause report" in res.stdout
    assert junit.exists() and "testcase" in junit.read_text()


# -- no leftovers -------------------------------------------------------------------------------------

def _processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if str(path) in cmd or exe.startswith(str(path)):
            found.append(f"{pid}: {cmd}")
    return found


def _netns_names() -> str:
    ip = shutil.which("ip")
    if ip is None:
        return ""
    return subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout


def test_no_leftovers_after_run_and_after_ctrl_c(tmp_path: Path) -> None:
    d = _build(tmp_path / "bin", "good_server", "good_client", "m_life3_forever")
    before = _netns_names()
    res = sockconf("check", str(_target_file(d, server="m_life3_forever")), "--clause", "LIFE-*",
                   "HELLO-1", tmp_path=tmp_path)
    assert res.rc == 1, res.explain()          # LIFE-3 fails: it never exits by itself
    assert _processes_under(d) == []
    # Ctrl-C in a terminal reaches the whole foreground process group.
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "conformance", "check",
                             str(_target_file(d, server="m_life3_forever")), "-n", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 60
        while not _processes_under(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_under(d), "the run never started a target"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _processes_under(d) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_under(d) == []
    assert _netns_names() == before
    # No scratch directory of ours survived the interrupt (pytest keeps its own
    # basetemp there under its retention policy: not ours to judge).
    assert [p.name for p in scratch.iterdir() if p.name.startswith(("sockconf-", "sc-"))] == []


# -- non-root ---------------------------------------------------------------------------------------------

WIRE_CLAUSES = ["LIFE-4", "HELLO-3", "CLI-2", "CLI-5"]


def test_non_root_gets_real_wire_verdicts(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the unprivileged user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import conformance, scapy"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this interpreter is not usable by nobody (build the virtualenv from "
                    f"/usr/bin/python3.11): {probe.stderr.strip()[-200:]}")
    work = Path(tempfile_dir())
    try:
        d = _build(work / "bin", "good_server", "good_client")
        os.chmod(work, 0o777)
        res = subprocess.run(
            [*as_nobody, sys.executable, "-m", "conformance", "check", str(_target_file(d)),
             "--clause", *WIRE_CLAUSES, "--report-json", str(work / "r.json")],
            capture_output=True, text=True, timeout=600, cwd=work,
            env={**os.environ, "HOME": str(work)})
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
        doc = json.loads((work / "r.json").read_text())
        verdicts = {c["id"]: c["verdict"] for c in doc["clauses"]}
        assert verdicts == dict.fromkeys(WIRE_CLAUSES, "pass"), doc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile
    d = tempfile.mkdtemp(prefix="sockconf-nobody-", dir="/tmp")
    os.chmod(d, 0o755)
    return d


# -- serve, matrix, hypothesis profiles ----------------------------------------------------------

def test_serve_runs_the_reference_server(tmp_path: Path) -> None:
    from conformance.harness import peers
    from conformance.harness.process import Runner
    from conformance.harness.readiness import wait_listening

    runner = Runner(tmp_path)
    try:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = runner.spawn([sys.executable, "-m", "conformance", "serve", "hello", str(port),
                             "--backlog", "7"])
        listener = wait_listening(proc.pid, transport="tcp4", port=port, timeout=10,
                                  exited=proc.poll)
        assert listener.entry.local == ("0.0.0.0", port)
        got = peers.fetch_greeting("tcp4", port)
        assert got.data == b"Hello World!\0" and got.end == "fin"
        assert proc.wait(5) == 0
    finally:
        runner.close()


def test_matrix_side_by_side(tmp_path: Path) -> None:
    d = _build(tmp_path / "bin", "good_server", "good_client", "m_hello1_no_nul")
    good = _target_file(d)
    (d / "bad").mkdir()
    bad = _target_file(d / "bad", server="../m_hello1_no_nul", client="../good_client")
    html = tmp_path / "m.html"
    res = subprocess.run([sys.executable, "-m", "conformance", "matrix", str(good), str(bad),
                          "--clause", "HELLO-1", "--html", str(html)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("HELLO-1"))
    assert row.split()[1:] == ["pass", "fail"]
    assert 'class="fail"' in html.read_text()


def test_hypothesis_profiles_are_selectable(tmp_path: Path) -> None:
    res = sockconf("check", "--clause", "HELLO-1", "--hypothesis-profile", "ci",
                   "--hypothesis-seed", "1", tmp_path=tmp_path)
    assert res.rc == 0, res.explain()


def test_users_own_pytest_setup_does_not_leak_in(tmp_path: Path) -> None:
    # A project directory with its own (here: broken) conftest files and pytest
    # configuration: `sockconf check` run from there must not pick them up.
    (tmp_path / "conftest.py").write_text("raise RuntimeError('user conftest loaded')\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text("raise RuntimeError('user conftest loaded')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --definitely-not-an-option\n")
    res = sockconf("check", "--clause", "HELLO-1", tmp_path=tmp_path)
    assert res.rc == 0, res.explain()
