"""`<prog>` of ARGS-1/2 (REQUIREMENTS 2026-12-06): argv[0] or its basename, or the
script, module or main class an interpreter or VM was given, as a path or a basename."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.checks.support import program_names


@pytest.mark.parametrize(("argv", "template", "accepted", "refused"), [
    pytest.param(["./bin/srv", "5000"], ("./bin/srv", "{port}"),
                 ["./bin/srv", "srv"], ["5000"], id="c-program"),
    pytest.param(["node", "app/x.js", "5000"], ("node", "app/x.js", "{port}"),
                 ["node", "x.js", "app/x.js"], ["5000"], id="node"),
    pytest.param(["node", "x.js", "5000"], ("node", "x.js", "{port}"),
                 ["x.js"], ["5000"], id="node-script-in-base-dir"),
    pytest.param(["perl", "-w", "x.pl", "5000"], ("perl", "-w", "x.pl", "{port}"),
                 ["x.pl"], ["-w"], id="perl"),
    pytest.param(["java", "-cp", "bin", "Hello", "5000"], ("java", "-cp", "bin", "Hello", "{port}"),
                 ["Hello", "java"], ["bin", "-cp"], id="java-class"),
    pytest.param(["java", "-cp", "bin", "com.example.Hello", "127.0.0.1", "5000"],
                 ("java", "-cp", "bin", "com.example.Hello", "{host}", "{port}"),
                 ["com.example.Hello", "Hello"], ["bin", "127.0.0.1"], id="java-package"),
    pytest.param(["java", "-jar", "app.jar", "5000"], ("java", "-jar", "app.jar", "{port}"),
                 ["app.jar"], ["5000"], id="java-jar"),
    pytest.param(["python3", "-m", "pkg", "5000"], ("python3", "-m", "pkg", "{port}"),
                 ["pkg", "__main__.py"], ["-m", "5000"], id="python-module"),
    pytest.param(["python3", "srv.py", "--data", "d.db", "5000"],
                 ("python3", "srv.py", "--data", "{data}", "{port}"),
                 ["srv.py"], ["d.db", "--data"], id="python-script-with-options"),
])
def test_program_names(tmp_path: Path, argv: list[str], template: tuple[str, ...],
                       accepted: list[str], refused: list[str]) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__main__.py").write_text("")
    names = program_names(argv, template, tmp_path)
    assert set(accepted) <= names, names
    assert not set(refused) & names, names
    if argv[1:2] == ["-m"]:  # python -m: sys.argv[0] is the file's path
        assert str((tmp_path / "pkg" / "__main__.py").resolve()) in names
    elif argv[1].endswith(".js"):  # node: process.argv[1] is the script's absolute path
        assert str((tmp_path / argv[1]).resolve()) in names
