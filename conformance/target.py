"""The target model: what program to run, how to call it, what it claims to support.

A target comes from a TOML target file (INTERFACE.md) or from `--server/--client`
command strings.  Everything here is pure data + validation; nothing is spawned.
Errors are `TargetFileError`, which the CLI turns into exit status 2 with one line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import string
import sys
import sysconfig
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PROFILES = ("hello", "echo", "jsondoc")
TRANSPORTS = ("tcp4", "tcp6", "unix", "udp4")
PROFILE_TRANSPORTS = {
    "hello": ("tcp4", "tcp6", "unix"),
    "echo": ("tcp4", "tcp6", "unix", "udp4"),
    "jsondoc": ("tcp4", "unix"),
}
# Option name -> the placeholders its argv template may use.
OPTIONS: dict[str, tuple[str, ...]] = {
    "reuseaddr": (),
    "linger": ("seconds",),
    "keepalive": ("idle", "interval", "count"),
    "rcvbuf": ("bytes",),
    "sndbuf": ("bytes",),
    "backlog": ("n",),
    "oobinline": (),
    "broadcast": (),
    "dontroute": (),
    "debug": (),
}
# The options that apply to the hello client (REQUIREMENTS.md, OPT table).
CLIENT_OPTIONS = ("linger", "keepalive", "rcvbuf", "sndbuf", "dontroute", "debug")
# Placeholders allowed in a program's argv.  {python} is our extension: the
# interpreter running sockconf, handy for targets written in Python.
PROGRAM_PLACEHOLDERS = ("port", "host", "path", "data", "python")

BUILTIN_DIR = Path(__file__).parent / "targets"


class TargetFileError(Exception):
    """A target file or command string that cannot be used (exit status 2)."""


@dataclass(frozen=True)
class Program:
    """One side of a target (server or client) as declared."""

    argv: tuple[str, ...]
    transports: tuple[str, ...] = ("tcp4",)
    startup_timeout: float = 5.0
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Our extension: a different command line for some transports, e.g.
    # [server.transport_argv] unix = ["./srv", "--unix", "{path}"]; default: argv.
    transport_argv: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Added to the program's environment (INTERFACE.md `env`).
    env: dict[str, str] = field(default_factory=dict)
    # A factor (>= 1) for every wait on this program: slow runtimes (a JVM) raise
    # it in the target file; `--timeout-scale` multiplies it.
    timeout_scale: float = 1.0

    def supports(self, option: str) -> bool:
        return option in self.options

    def argv_for(self, transport: str) -> tuple[str, ...]:
        return self.transport_argv.get(transport, self.argv)


@dataclass(frozen=True)
class Target:
    name: str
    profile: str
    base_dir: Path
    server: Program | None
    client: Program | None = None
    file: Path | None = None

    # -- building command lines -------------------------------------------------

    def resolve_executable(self, argv0: str) -> str:
        """Where argv[0] lives: relative paths against the target's folder, bare
        names in our own scripts folder (the venv's bin) and then PATH."""
        if "/" in argv0:
            return str((self.base_dir / argv0).resolve()) if not os.path.isabs(argv0) else argv0
        search = os.pathsep.join(
            [sysconfig.get_path("scripts"), os.path.dirname(sys.executable),
             os.environ.get("PATH", os.defpath)])
        found = shutil.which(argv0, path=search)
        if found is None:
            raise TargetFileError(f"program {argv0!r} not found (in {search})")
        return found

    def command(self, program: Program, *, transport: str = "tcp4", port: int | str | None = None,
                host: str = "127.0.0.1", path: str = "", data: str = "",
                options: dict[str, dict[str, object]] | None = None) -> list[str]:
        """The argv to exec: program argv with placeholders filled, then the
        argv of each requested option (in the order given)."""
        values = {"port": "" if port is None else str(port), "host": host, "path": path,
                  "data": data, "python": sys.executable}
        argv = [fill(a, values) for a in program.argv_for(transport)]
        for opt, params in (options or {}).items():
            if opt not in program.options:
                raise TargetFileError(f"target does not declare option {opt!r}")
            argv += [fill(a, {k: str(v) for k, v in params.items()}) for a in program.options[opt]]
        return argv

    def scaled(self, factor: float) -> Target:
        """This target with every program's timeout_scale multiplied by `factor`
        (`--timeout-scale F`)."""
        check_timeout_scale(factor, "--timeout-scale")

        def scale(p: Program | None) -> Program | None:
            return None if p is None else replace(p, timeout_scale=p.timeout_scale * factor)

        return replace(self, server=scale(self.server), client=scale(self.client))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile,
                "file": str(self.file) if self.file else None}


def fill(template: str, values: dict[str, str]) -> str:
    try:
        return template.format_map(values)
    except KeyError as e:  # validated at load time; this is a programming error
        raise TargetFileError(f"unknown placeholder {e} in {template!r}") from None


def _placeholders(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise TargetFileError(f"bad template {template!r}: {e}") from None


MAX_TIMEOUT_SCALE = 100.0


def check_timeout_scale(value: Any, where: str) -> float:
    """A timeout scale: a number in [1, 100] (waits never shrink below the
    suite's own; beyond 100 every hang guard would be minutes long)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 1.0 <= value <= MAX_TIMEOUT_SCALE):
        raise TargetFileError(f"{where} must be a number from 1 to {MAX_TIMEOUT_SCALE:g}, "
                              f"got {value!r}")
    return float(value)


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TargetFileError(f"[{where}] must be a table of strings")
    for k, v in value.items():
        if not k or "=" in k or "\0" in k:
            raise TargetFileError(f"{where}: {k!r} is not an environment variable name")
        if not isinstance(v, str) or "\0" in v:
            raise TargetFileError(f"{where}.{k} must be a string")
    return dict(value)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetFileError(f"{where} must be a list of strings")
    return tuple(value)


def _program(table: Any, where: str, profile: str, side: str) -> Program:
    if not isinstance(table, dict):
        raise TargetFileError(f"[{where}] must be a table")
    unknown = set(table) - {"argv", "transports", "startup_timeout", "options", "transport_argv",
                            "env", "timeout_scale"}
    if unknown:
        raise TargetFileError(f"[{where}] unknown key(s): {', '.join(sorted(unknown))}")
    if "argv" not in table:
        raise TargetFileError(f"[{where}] needs argv")
    argv = _argv(table["argv"], f"{where}.argv")
    per_transport = table.get("transport_argv", {})
    if not isinstance(per_transport, dict):
        raise TargetFileError(f"[{where}.transport_argv] must be a table")
    transport_argv = {t: _argv(v, f"{where}.transport_argv.{t}") for t, v in per_transport.items()}
    transports = _str_list(table.get("transports", ["tcp4"]), f"{where}.transports")
    if not transports:
        raise TargetFileError(f"{where}.transports must not be empty")
    for t in transports:
        if t not in PROFILE_TRANSPORTS[profile]:
            raise TargetFileError(
                f"{where}.transports: {t!r} is not a {profile} transport "
                f"(one of {', '.join(PROFILE_TRANSPORTS[profile])})")
    timeout = table.get("startup_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise TargetFileError(f"{where}.startup_timeout must be a number of seconds in (0, 300]")
    options: dict[str, tuple[str, ...]] = {}
    opts = table.get("options", {})
    if not isinstance(opts, dict):
        raise TargetFileError(f"[{where}.options] must be a table")
    for name, tmpl in opts.items():
        if name not in OPTIONS:
            raise TargetFileError(
                f"[{where}.options] unknown option {name!r} (known: {', '.join(OPTIONS)})")
        items = _str_list(tmpl, f"{where}.options.{name}")
        for a in items:
            bad = _placeholders(a) - set(OPTIONS[name])
            if bad:
                raise TargetFileError(
                    f"{where}.options.{name}: placeholder(s) {sorted(bad)} not allowed "
                    f"(allowed: {list(OPTIONS[name]) or 'none'})")
        options[name] = items
    if side == "client":
        not_client = sorted(set(options) - set(CLIENT_OPTIONS))
        if not_client:
            raise TargetFileError(
                f"[{where}.options] {', '.join(map(repr, not_client))} do(es) not apply to a client "
                f"(client options: {', '.join(CLIENT_OPTIONS)})")
    for t in transport_argv:
        if t not in transports:
            raise TargetFileError(f"{where}.transport_argv.{t}: {t!r} is not in {where}.transports")
    env = _env(table.get("env", {}), f"{where}.env")
    scale = check_timeout_scale(table.get("timeout_scale", 1.0), f"{where}.timeout_scale")
    return Program(argv, transports, float(timeout), options, transport_argv, env, scale)


def _argv(value: Any, where: str) -> tuple[str, ...]:
    argv = _str_list(value, where)
    if not argv or not argv[0]:
        raise TargetFileError(f"{where} must not be empty")
    for a in argv:
        bad = _placeholders(a) - set(PROGRAM_PLACEHOLDERS)
        if bad:
            raise TargetFileError(f"{where}: unknown placeholder(s) {sorted(bad)} in {a!r}")
    return argv


def load_file(path: str | os.PathLike[str]) -> Target:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TargetFileError(f"cannot read target file {str(p)!r}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetFileError(f"{p}: not valid TOML: {e}") from None
    return from_mapping(data, base_dir=p.resolve().parent, file=p.resolve())


def from_mapping(data: dict[str, Any], *, base_dir: Path, file: Path | None = None) -> Target:
    where = str(file) if file else "target"
    unknown = set(data) - {"name", "profile", "server", "client"}
    if unknown:
        raise TargetFileError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    profile = data.get("profile")
    if profile not in PROFILES:
        raise TargetFileError(f"{where}: profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    name = data.get("name", file.stem if file else "target")
    if not isinstance(name, str):
        raise TargetFileError(f"{where}: name must be a string")
    if "server" not in data and "client" not in data:
        raise TargetFileError(f"{where}: needs a [server] or [client] table")
    server = _program(data["server"], "server", profile, "server") if "server" in data else None
    client = None
    if "client" in data:
        if profile != "hello":
            raise TargetFileError(f"{where}: [client] is only defined for the hello profile")
        client = _program(data["client"], "client", profile, "client")
    return Target(name=name, profile=profile, base_dir=base_dir, server=server, client=client,
                  file=file)


def from_commands(server: str | None, client: str | None, profile: str | None,
                  base_dir: Path | None = None) -> Target:
    """A target from `--server/--client` strings, split like a shell does."""
    profile = profile or "hello"
    data: dict[str, Any] = {"name": "command-line target", "profile": profile}
    try:
        if server:
            data["server"] = {"argv": shlex.split(server)}
        if client:
            data["client"] = {"argv": shlex.split(client)}
    except ValueError as e:
        raise TargetFileError(f"cannot split command: {e}") from None
    return from_mapping(data, base_dir=base_dir or Path.cwd())


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def builtin(name: str) -> Target:
    path = BUILTIN_DIR / f"{name}.toml"
    if not path.exists():
        raise TargetFileError(f"no built-in target {name!r} (have: {', '.join(builtin_names())})")
    return load_file(path)


def resolve(file: str | None, server: str | None, client: str | None,
            profile: str | None) -> Target:
    """The one target a check run is about (INTERFACE.md precedence)."""
    if file and (server or client):
        raise TargetFileError("give either a target file or --server/--client, not both")
    if file:
        path = Path(file)
        if not path.exists() and not path.suffix and (BUILTIN_DIR / f"{file}.toml").exists():
            t = builtin(file)
        else:
            t = load_file(path)
        if profile and profile != t.profile:
            raise TargetFileError(f"--profile {profile} contradicts the target's profile {t.profile}")
        return t
    if server or client:
        return from_commands(server, client, profile)
    return builtin(f"reference-{profile or 'hello'}")
