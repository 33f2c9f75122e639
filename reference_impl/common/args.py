"""Strict command-line parsing for the reference programs (no argparse: start-up time).

``atoi``-style parsing silently turns ``12ab`` into 12 and ``abc`` into 0; the
parsers here refuse anything that is not exactly what they expect, so a bad port
never results in listening on a wrong one (ARGS-3, ARGS-4).

The option scanner splits ``argv[1:]`` into positionals and ``--options``.  Only
words starting with ``--`` are options, so ``-1`` (a bad port) stays a positional
and is reported as a bad port.  Options may come before, between or after the
positionals; ``--`` ends option scanning.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence

_DIGITS = frozenset("0123456789")


class ArgError(ValueError):
    """A bad command-line value or option; the message is meant for stderr."""


def _decimal(text: str, what: str, lo: int, hi: int) -> int:
    if not text or not set(text) <= _DIGITS or len(text) > 12:
        raise ArgError(f"invalid {what} {text!r}: expected a decimal integer in {lo}..{hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise ArgError(f"invalid {what} {text!r}: expected a decimal integer in {lo}..{hi}")
    return value


def parse_port(text: str) -> int:
    """A TCP/UDP port: decimal digits only (no sign, no blanks), value 1..65535."""
    return _decimal(text, "port", 1, 65535)


def int_in_range(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """A parser for a plain decimal integer in ``lo..hi`` (no sign, no blanks)."""

    def parse(text: str) -> int:
        return _decimal(text, what, lo, hi)

    parse.__name__ = f"parse_{what.replace(' ', '_')}"
    return parse


def parse_ipv4(text: str) -> str:
    """A dotted-quad IPv4 address, as inet_pton(AF_INET) accepts it."""
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        raise ArgError(f"invalid IPv4 address {text!r}") from None
    return text


def parse_ipv6(text: str) -> str:
    """An IPv6 literal, as inet_pton(AF_INET6) accepts it (no brackets, no scope)."""
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        raise ArgError(f"invalid IPv6 address {text!r}") from None
    return text


def parse_host(text: str) -> tuple[int, str]:
    """An IPv4 or IPv6 literal (never a name: no resolver, no packet sent).

    Returns ``(address_family, text)``.
    """
    try:
        return socket.AF_INET, parse_ipv4(text)
    except ArgError:
        pass
    try:
        return socket.AF_INET6, parse_ipv6(text)
    except ArgError:
        raise ArgError(f"invalid IP address {text!r}: expected an IPv4 or IPv6 literal") from None


# An option table maps "--name" to the parsers of its values, one per value, each
# with the metavariable shown in messages: {"--linger": (("SECONDS", parse),)}.
OptionTable = Mapping[str, Sequence[tuple[str, Callable[[str], object]]]]


def scan(
    args: Sequence[str], table: OptionTable
) -> tuple[list[str], dict[str, tuple[object, ...]]]:
    """Split ``args`` (argv without argv[0]) into positionals and parsed options.

    Returns ``(positionals, {"--name": (value, ...)})``; a flag without values maps
    to ``()``.  A repeated option keeps its last values.  Raises ``ArgError`` for an
    unknown option, a missing value, or a value its parser refuses.
    """
    positionals: list[str] = []
    options: dict[str, tuple[object, ...]] = {}
    i = 0
    n = len(args)
    while i < n:
        word = args[i]
        i += 1
        if word == "--":
            positionals.extend(args[i:])
            break
        if not word.startswith("--"):
            positionals.append(word)
            continue
        spec = table.get(word)
        if spec is None:
            known = ", ".join(sorted(table)) or "none"
            raise ArgError(f"unknown option {word!r} (known options: {known})")
        if i + len(spec) > n:
            metas = " ".join(meta for meta, _ in spec)
            raise ArgError(f"option {word} needs {len(spec)} value(s): {word} {metas}")
        values: list[object] = []
        for meta, parse in spec:
            text = args[i]
            i += 1
            try:
                values.append(parse(text))
            except ArgError as exc:
                raise ArgError(f"option {word} {meta}: {exc}") from None
        options[word] = tuple(values)
    return positionals, options


def parse_path(text: str) -> str:
    """A filesystem path for an AF_UNIX socket (non-empty, fits sun_path)."""
    if not text or "\0" in text:
        raise ArgError(f"invalid socket path {text!r}")
    if len(text.encode()) > 107:
        raise ArgError(f"socket path too long ({len(text.encode())} bytes, at most 107)")
    return text
