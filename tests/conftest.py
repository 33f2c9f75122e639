"""Shared fixtures of the project's own tests."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import HELLO


@pytest.fixture(scope="session")
def hello_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fixtures/hello compiled with `cc` into T/bin, target files copied to T/targets."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc): the C fixtures cannot be built")
    out = tmp_path_factory.mktemp("hello-fixtures")
    (out / "bin").mkdir()
    sources = sorted((HELLO / "src").glob("*.c"))

    def build(src: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        cmd = [cc, "-O1", "-Wall", "-Wextra", "-o", str(out / "bin" / src.stem), str(src)]
        return src, subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for src, res in pool.map(build, sources):
            assert res.returncode == 0, f"cc failed for {src.name}:\n{res.stderr}"
    shutil.copytree(HELLO / "targets", out / "targets")
    return out


