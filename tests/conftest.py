"""Shared fixtures of the project's own tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES

# What each fixture family links against (Debian: libcjson-dev, libsqlite3-dev).
LINK = {"hello": [], "echo": ["-pthread"], "jsondoc": ["-pthread", "-lcjson", "-lsqlite3"]}


@pytest.fixture(scope="session")
def fixtures_built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """fixtures/PROFILE compiled with `cc` into T/bin (one program per src/*.c),
    target files copied to T/targets; built once per session and profile."""
    cache: dict[str, Path] = {}

    def build(profile: str) -> Path:
        if profile in cache:
            return cache[profile]
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            pytest.skip("no C compiler (cc): the C fixtures cannot be built")
        src_dir = FIXTURES / profile / "src"
        out = tmp_path_factory.mktemp(f"{profile}-fixtures")
        (out / "bin").mkdir()

        def one(src: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
            cmd = [cc, "-O1", "-Wall", "-Wextra", "-o", str(out / "bin" / src.stem), str(src),
                   *LINK[profile]]
            return src, subprocess.run(cmd, capture_output=True, text=True, timeout=120)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for src, res in pool.map(one, sorted(src_dir.glob("*.c"))):
                if res.returncode != 0 and "cJSON.h" in res.stderr:
                    pytest.skip("libcjson-dev is not installed (apt-get install libcjson-dev)")
                assert res.returncode == 0, f"cc failed for {src.name}:\n{res.stderr}"
        shutil.copytree(FIXTURES / profile / "targets", out / "targets")
        cache[profile] = out
        return out

    return build


@pytest.fixture(scope="session")
def polyglot_built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], Path]:
    """fixtures/polyglot copied to T once; each fixture's Makefile goal built there
    once.  A fixture whose runtime (`needs`) is missing skips with the reason."""
    out = tmp_path_factory.mktemp("polyglot-fixtures") / "polyglot"
    shutil.copytree(FIXTURES / "polyglot", out, ignore=shutil.ignore_patterns("bin", "classes"))
    built: set[str] = set()

    def build(fx: dict[str, Any]) -> Path:
        missing = [p for p in fx["needs"] if shutil.which(p) is None]
        if missing:
            pytest.skip(f"{fx['name']}: {', '.join(missing)} not installed (not on PATH)")
        goal = fx["build"]
        if goal and goal not in built:
            if shutil.which("make") is None:
                pytest.skip(f"{fx['name']}: make is not installed (needed to build {goal!r})")
            res = subprocess.run(["make", "-C", str(out), goal], capture_output=True, text=True,
                                 timeout=600)
            assert res.returncode == 0, f"make {goal} failed:\n{res.stdout}\n{res.stderr}"
            built.add(goal)
        return out

    return build


def _weight(item: pytest.Item) -> int:
    """Rough cost class: whole `sockconf check` runs take 10 s to minutes, the rest
    well under a second."""
    nodeid = item.nodeid
    if "test_fuzz_findings" in nodeid:
        return 3
    if "test_selftest" in nodeid:
        return 1 if "[hello-" in nodeid or "[hello]" in nodeid else 2
    return 1 if "test_cli.py" in nodeid else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Longest first (a stable sort: same order on every xdist worker), so that the
    # workers, which steal from each other (--dist worksteal), end together instead
    # of one running the slow tail alone.
    items.sort(key=_weight, reverse=True)
