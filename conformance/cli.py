"""`sockconf` — a thin front on the pytest plugin (INTERFACE.md).

Exit status: 0 conformant, 1 not conformant, 2 usage or target-file error,
3 the suite itself failed (a sockconf bug), 130 interrupted.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from conformance import __version__
from conformance.target import (
    TargetFileError,
    builtin,
    builtin_names,
    check_timeout_scale,
    resolve,
)

EXIT_OK, EXIT_NONCONFORMANT, EXIT_USAGE, EXIT_SUITE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PKG = Path(__file__).parent
PROFILES = ["hello", "echo", "jsondoc"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sockconf", description="Conformance suite for socket programs.")
    p.add_argument("--version", action="version", version=f"sockconf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check a target, clause by clause")
    _check_arguments(c)
    f = sub.add_parser("fuzz", help="a fuzz campaign: `check --duration` (default 10m)")
    _check_arguments(f, campaign=True)

    s = sub.add_parser("serve", help="run a reference server in the foreground")
    s.add_argument("profile", choices=PROFILES)
    s.add_argument("port")
    s.add_argument("options", nargs=argparse.REMAINDER,
                   help="server options (--backlog 16, --data PATH for jsondoc, ...)")

    cl = sub.add_parser("client", help="talk to a server as a person would")
    cl.add_argument("profile", choices=["jsondoc"])
    cl.add_argument("args", nargs=argparse.REMAINDER,
                    help="HOST PORT [REQUEST] (requests from stdin without REQUEST)")

    sub.add_parser("targets", help="list built-in targets")

    m = sub.add_parser("matrix", help="several targets side by side")
    m.add_argument("targets", nargs="+")
    m.add_argument("--html", metavar="FILE")
    m.add_argument("--strict", action="store_true")
    m.add_argument("--clause", nargs="+", action="extend", default=[], metavar="PATTERN")
    m.add_argument("-n", dest="workers", default="0")
    return p


def _check_arguments(c: argparse.ArgumentParser, campaign: bool = False) -> None:
    """The options of `check` (and of `fuzz`, a campaign)."""
    c.add_argument("target", nargs="?", help="target file (TOML) or built-in target name")
    c.add_argument("--server", metavar="CMD", help='server command line, e.g. "./hello_server {port}"')
    c.add_argument("--client", metavar="CMD", help='client command line, e.g. "./hello_client {host} {port}"')
    c.add_argument("--profile", choices=PROFILES)
    c.add_argument("--clause", nargs="+", action="extend", default=[], metavar="PATTERN",
                   help="only these clauses (globs: LIFE-*, ERR-1)")
    c.add_argument("--test", nargs="+", action="extend", default=[], metavar="NAME",
                   help="only the checks with this name (exact, or a glob), e.g. "
                        "'test_echo_fuzz[tcp4]'; a fuzz finding's reproduce line uses it")
    c.add_argument("--strict", action="store_true", help="a SHOULD failure is non-conformant too")
    c.add_argument("--require-complete", action="store_true",
                   help="exit 1 when a MUST clause that applies was not judged (skip, "
                        "not-testable)")
    c.add_argument("--timeout-scale", metavar="F", type=float,
                   help="multiply every wait on the target by F (>= 1), on top of the "
                        "target file's timeout_scale: for slow runtimes or loaded machines")
    c.add_argument("--report-json", metavar="FILE")
    c.add_argument("--junit-xml", metavar="FILE",
                   help="JUnit XML: a testcase per check with clause, level, verdict properties")
    c.add_argument("--html", metavar="FILE", help="the report as one self-contained HTML page")
    c.add_argument("--artifacts", metavar="DIR", help="keep pcap, stdout/stderr, traces of failures")
    c.add_argument("-n", dest="workers", default="auto", metavar="N|auto",
                   help="parallel workers (pytest-xdist); default auto: one per core; "
                        "0: all in this process")
    c.add_argument("--hypothesis-profile", choices=["ci", "dev", "nightly"])
    c.add_argument("--hypothesis-seed", metavar="S")
    c.add_argument("--isolation", choices=["auto", "none"], default="auto",
                   help="auto: private network namespace per worker; none: host loopback")
    c.add_argument("-v", "--verbose", action="store_true",
                   help="pytest's own detail: each check, tracebacks, warnings")
    c.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for pytest (repeatable)")
    c.add_argument("--duration", metavar="TIME", type=_seconds,
                   default=_seconds("10m") if campaign else None,
                   help="a fuzz campaign: only the fuzz checks, each fuzzing in rounds until "
                        "TIME (e.g. 90s, 30m, 2h) is used; progress and findings as they "
                        "appear; the example database under --artifacts "
                        "(default ./sockconf-campaign)" + (" (default 10m)" if campaign else ""))
    c.add_argument("--hypothesis-db", metavar="DIR",
                   help="hypothesis' example database: findings saved there are replayed "
                        "first (a campaign's: ARTIFACTS/hypothesis-db)")


def _seconds(text: str) -> float:
    """'90', '90s', '30m', '2h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r}")
    return value


def _pytest_args(a: argparse.Namespace) -> list[str]:
    # hypothesis' own pytest plugin is off: it imports hypothesis in every process
    # (~0.1-1 s each) even for a profile without fuzz checks; the sockconf plugin
    # takes the profile and seed and applies them when a check imports hypothesis.
    from conformance.harness.testbed import scratch
    args = ["--pyargs", "conformance.checks", "-c", str(PKG / "pytest.ini"),
            "--rootdir", str(PKG), "--noconftest", "-p", "no:cacheprovider", "-p", "no:xprocess",
            "-p", "no:hypothesispytest",
            "-n", str(a.workers), "--sockconf-isolation", a.isolation,
            # pytest's temp root in this run's scratch dir, removed with it: the
            # default /tmp/pytest-of-$USER is refused when $USER names another
            # user than the one running (sudo -u, setpriv) and would outlive us.
            "--basetemp", str(scratch("sockconf-pytest-") / "basetemp")]
    if a.verbose:
        args += ["-v", "--tb=short"]
    else:
        # A line per clause as its verdict becomes known (the plugin's progress)
        # instead of pytest's dots, percentages and warnings summary.
        args += ["-qq", "--tb=no", "--no-header", "--disable-warnings", "-o",
                 "console_output_style=classic", "--sockconf-progress"]
    repro = ["sockconf", "check"]
    if a.target:
        tgt = a.target if not os.path.exists(a.target) else str(Path(a.target).resolve())
        args += ["--sockconf-target", tgt]
        repro.append(tgt)
    for flag, val in (("server", a.server), ("client", a.client), ("profile", a.profile)):
        if val:
            args += [f"--sockconf-{flag}", val]
            repro += [f"--{flag}", val]
    for pat in a.clause:
        args += ["--sockconf-clause", pat]
    for name in a.test:
        args += ["--sockconf-test", name]
    if a.strict:
        args.append("--sockconf-strict")
    if a.require_complete:
        args.append("--sockconf-require-complete")
    if a.timeout_scale is not None:
        args += ["--sockconf-timeout-scale", str(a.timeout_scale)]
        repro += ["--timeout-scale", str(a.timeout_scale)]
    for flag, val in (("report-json", a.report_json), ("junit-xml", a.junit_xml),
                      ("html", a.html), ("artifacts", a.artifacts)):
        if val:
            args += [f"--sockconf-{flag}", val]
    if a.hypothesis_profile:
        args += ["--sockconf-hypothesis-profile", a.hypothesis_profile]
        repro += ["--hypothesis-profile", a.hypothesis_profile]
    if a.hypothesis_seed:
        args += ["--sockconf-hypothesis-seed", a.hypothesis_seed]
        repro += ["--hypothesis-seed", a.hypothesis_seed]
    if a.hypothesis_db:
        db = str(Path(a.hypothesis_db).resolve())
        args += ["--sockconf-hypothesis-db", db]
        repro += ["--hypothesis-db", db]
    if a.duration is not None:
        # (not in the reproduce line: a finding replays in one run, from the database)
        args += ["--sockconf-fuzz-duration", str(a.duration)]
    args += ["--sockconf-reproduce", shlex.join(repro)]
    return args + list(a.pytest_arg)


def check(a: argparse.Namespace) -> int:
    if a.timeout_scale is not None:
        try:
            check_timeout_scale(a.timeout_scale, "--timeout-scale")
        except TargetFileError as e:
            print(f"sockconf: {e}", file=sys.stderr)
            return EXIT_USAGE
    if not (a.target or a.server or a.client or a.profile):
        if a.duration is not None:
            print("sockconf: a fuzz campaign needs a target or --profile", file=sys.stderr)
            return EXIT_USAGE
        if a.test:
            # A check's name belongs to one profile's run: say which.
            print("sockconf: --test needs a target or --profile", file=sys.stderr)
            return EXIT_USAGE
        return check_all_references(a)
    try:
        resolve(a.target, a.server, a.client, a.profile)
    except TargetFileError as e:
        print(f"sockconf: {e}", file=sys.stderr)
        return EXIT_USAGE
    import pytest

    tail = None
    if a.duration is not None:
        tail = _start_campaign(a)
    try:
        rc = pytest.main(_pytest_args(a))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if tail is not None:
            tail.stop()
    return {0: EXIT_OK, 1: EXIT_NONCONFORMANT, 2: EXIT_INTERRUPTED, 3: EXIT_SUITE,
            4: EXIT_USAGE, 5: EXIT_USAGE}.get(int(rc), EXIT_SUITE)


class _Tail:
    """Prints the lines a file grows by (a campaign's progress log), from a thread,
    until stopped (then the rest)."""

    def __init__(self, path: Path, prefix: str) -> None:
        import threading
        self.path, self.prefix, self.offset = path, prefix, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="campaign-tail")
        self.thread.start()

    def _show(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            print(f"{self.prefix}{line}", flush=True)

    def _run(self) -> None:
        while not self.done.wait(1.0):
            self._show()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5.0)
        self._show()


def _start_campaign(a: argparse.Namespace) -> _Tail:
    """A campaign's defaults (artifacts dir, nightly profile, its example
    database there) and the thread that prints its progress."""
    from conformance.plugin import CAMPAIGN_LOG

    if not a.artifacts:
        a.artifacts = "sockconf-campaign"
    a.artifacts = str(Path(a.artifacts).resolve())
    a.hypothesis_profile = a.hypothesis_profile or "nightly"
    if not a.hypothesis_db:
        from conformance.hypothesis_setup import database_dir
        a.hypothesis_db = database_dir(a.artifacts)
    log = Path(a.artifacts) / CAMPAIGN_LOG
    Path(a.artifacts).mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    print(f"fuzz campaign: {a.duration:g} s over the fuzz checks; artifacts {a.artifacts}, "
          f"example database {a.hypothesis_db} (a finding saved there is replayed first)",
          flush=True)
    return _Tail(log, "  fuzz: ")


def check_all_references(a: argparse.Namespace) -> int:
    """`sockconf check` with no target: the built-in reference, all profiles —
    one run per profile (each a complete report), then one combined verdict.

    The combined JSON keeps INTERFACE.md's shape (a clause's verdict is its worst
    over the profiles, its tests are all of theirs) and adds `profiles`, the
    per-profile reports in full."""
    from conformance import clauses
    from conformance import report as rep

    # --clause patterns: each profile runs the ones that match its clauses; a
    # pattern that matches no clause of any profile is a usage error.
    wanted: dict[str, list[str]] = {}
    for profile in PROFILES:
        mine = [p for p in a.clause if clauses.select([p], clauses.applicable(profile))]
        if mine or not a.clause:
            wanted[profile] = mine
    matched = {p for patterns in wanted.values() for p in patterns}
    unknown = [p for p in a.clause if p not in matched]
    if unknown:
        print(f"sockconf: --clause {unknown[0]} matches no clause of any profile", file=sys.stderr)
        return EXIT_USAGE
    if not a.hypothesis_seed:
        # One seed for every profile's run: the combined report (and its
        # reproduce line) names the seed that replays all of them.
        import random
        a.hypothesis_seed = str(random.SystemRandom().randrange(1, 2**32))
    docs: dict[str, dict[str, object]] = {}
    worst = EXIT_OK
    with tempfile.TemporaryDirectory(prefix="sockconf-all-") as tmp:
        for profile, patterns in wanted.items():
            out = Path(tmp) / f"{profile}.json"
            argv = [sys.executable, "-m", "conformance", "check", f"reference-{profile}",
                    "--report-json", str(out), *_passthrough(a, patterns)]
            print(f"== sockconf check reference-{profile}", flush=True)
            try:
                rc = subprocess.run(argv, check=False).returncode
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
            if rc in (EXIT_USAGE, EXIT_SUITE, EXIT_INTERRUPTED) or rc < 0:
                return EXIT_INTERRUPTED if rc < 0 else rc
            worst = max(worst, rc)
            if out.exists():
                docs[profile] = json.loads(out.read_text())
    if not docs:
        return worst
    from conformance import render
    doc = rep.combine(docs, strict=a.strict)
    doc["reproduce"] = shlex.join(["sockconf", "check", *_passthrough(a, a.clause)])
    try:
        if a.report_json:
            rep.write_json(a.report_json, doc)
        if a.junit_xml:
            render.write_junit(a.junit_xml, doc)
        if a.html:
            render.write_html(a.html, doc)
    except OSError as e:
        print(f"sockconf: could not write the report: {e}", file=sys.stderr)
        return EXIT_SUITE
    print(f"== all profiles ({', '.join(docs)}): {rep.headline_of(doc)}")
    return worst


def _passthrough(a: argparse.Namespace, patterns: list[str]) -> list[str]:
    """The options of `check` that every per-profile run shares."""
    out = ["-n", str(a.workers), "--isolation", a.isolation]
    if patterns:
        out += ["--clause", *patterns]
    for flag, on in (("--strict", a.strict), ("--verbose", a.verbose),
                     ("--require-complete", a.require_complete)):
        if on:
            out.append(flag)
    scale = None if a.timeout_scale is None else str(a.timeout_scale)
    for flag, val in (("--artifacts", a.artifacts), ("--hypothesis-profile", a.hypothesis_profile),
                      ("--hypothesis-seed", a.hypothesis_seed), ("--timeout-scale", scale)):
        if val:
            out += [flag, val]
    for extra in a.pytest_arg:
        out += ["--pytest-arg", extra]
    return out


def serve(a: argparse.Namespace) -> int:
    import importlib

    server = importlib.import_module(f"reference_impl.{a.profile}.server")
    return int(server.main([f"sockconf serve {a.profile}", a.port, *a.options]))


def client(a: argparse.Namespace) -> int:
    import importlib

    program = importlib.import_module(f"reference_impl.{a.profile}.client")
    return int(program.main([f"sockconf client {a.profile}", *a.args]))


def targets(_: argparse.Namespace) -> int:
    for name in builtin_names():
        t = builtin(name)
        print(f"{name:24} {t.profile:8} {t.name}")
    return EXIT_OK


def matrix(a: argparse.Namespace) -> int:
    columns: list[tuple[str, dict[str, str]]] = []
    worst = EXIT_OK
    with tempfile.TemporaryDirectory(prefix="sockconf-matrix-") as tmp:
        for i, t in enumerate(a.targets):
            out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, "-m", "conformance", "check", t, "--report-json", str(out),
                   "-n", str(a.workers)] + (["--strict"] if a.strict else [])
            if a.clause:
                cmd += ["--clause", *a.clause]
            rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode
            if rc in (EXIT_USAGE, EXIT_SUITE) or not out.exists():
                print(f"sockconf: {t}: check failed with exit status {rc}", file=sys.stderr)
                return rc if rc in (EXIT_USAGE, EXIT_SUITE) else EXIT_SUITE
            worst = max(worst, rc)
            doc = json.loads(out.read_text())
            columns.append((doc["target"]["name"], {c["id"]: c["verdict"] for c in doc["clauses"]}))
    ids = list(dict.fromkeys(cid for _, col in columns for cid in col))
    width = max(len(i) for i in ids)
    print(" " * width + "  " + "  ".join(f"{name[:14]:14}" for name, _ in columns))
    for cid in ids:
        print(f"{cid:<{width}}  " + "  ".join(f"{col.get(cid, '-'):14}" for _, col in columns))
    if a.html:
        rows = "".join(
            f"<tr><th>{html.escape(cid)}</th>"
            + "".join(f'<td class="{col.get(cid, "")}">{col.get(cid, "-")}</td>' for _, col in columns)
            + "</tr>" for cid in ids)
        head = "".join(f"<th>{html.escape(n)}</th>" for n, _ in columns)
        Path(a.html).write_text(
            "<!doctype html><meta charset=utf-8><title>sockconf matrix</title><style>"
            "td.pass{background:#cfc}td.fail,td.error{background:#fcc}td.warn{background:#ffc}"
            "td.skip,td.not-testable{background:#eee}</style>"
            f"<table><tr><th></th>{head}</tr>{rows}</table>\n")
    return worst


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    return {"check": check, "fuzz": check, "serve": serve, "client": client, "targets": targets,
            "matrix": matrix}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
