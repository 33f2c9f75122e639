"""Reference echo server: ``sockconf-echo-server [options] <port>``.

Transports (one per process): TCP over IPv4 on ``0.0.0.0:<port>`` by default,
``--ipv6`` (``::``, dual stack), ``--unix PATH`` (an AF_UNIX stream socket at PATH;
then no port is given), ``--udp`` (UDP on ``0.0.0.0:<port>``, or ``::`` with
``--ipv6``).  The other options are those of ``common.options`` (SO_REUSEADDR is on
unless ``--no-reuseaddr``; ``--oobinline`` sets SO_OOBINLINE on the listener and on
every connection).  Without ``--backlog`` the backlog is 128, so a burst of
connections does not overflow the accept queue; ``--backlog`` is ignored with
``--udp`` (nothing listens).

Concurrency model: one thread per connection.  The main thread runs the classic
lifecycle one step at a time (LIFE-0)::

    socket -> setsockopt(SO_REUSEADDR) -> setsockopt(options...) -> bind(wildcard)
    -> listen(backlog) -> loop: accept -> start a daemon thread for the connection

and each connection thread runs ``protocol.EchoConnection``::

    [setsockopt(per-connection options)] -> (recv -> send*)* -> close(connection)

so an idle client, or one that never reads its echo (its thread blocks in send()),
delays nobody else (LIFE-7).  A failed recv/send (ECONNRESET, EPIPE, ...) closes
that connection only (LIFE-8); accept() is retried after EINTR and ECONNABORTED,
any other accept() failure (EMFILE, ENOMEM, ...) is ``accept() error``, exit 1.
With ``--udp`` the main thread alone does ``recvfrom -> sendto`` forever.

Signals: SIGPIPE stays ignored (Python ignores it at start-up; sends use
MSG_NOSIGNAL as well: ERR-6).  SIGTERM (and Ctrl-C) end the server at once
(LIFE-6): the handler runs in the main thread, which closes the listener (and
removes the ``--unix`` socket file) and exits 0; connection threads are daemons,
their sockets are closed by the kernel at exit.  The connection threads block
SIGTERM and SIGINT, so the signal always interrupts the main thread's accept().
Python retries calls interrupted by a signal itself (PEP 475, ERR-8).

Only the standard library; imports are kept small so start-up stays fast.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from reference_impl.common.args import ArgError, parse_port, scan
from reference_impl.common.errors import error_handling, usage, warn
from reference_impl.common.options import (
    SERVER_OPTION_TABLE,
    ServerOptions,
    apply_listener_options,
    connection_setsockopts,
)
from reference_impl.common.unixpath import UnixPath
from reference_impl.echo.protocol import (
    BUFFER_SIZE,
    DATAGRAM_BUFFER_SIZE,
    Action,
    EchoConnection,
)

PROG = "sockconf-echo-server"
DEFAULT_BACKLOG = 128
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)

# The common server options plus the datagram transport.
ECHO_OPTION_TABLE: Mapping[str, Sequence[tuple[str, Callable[[str], object]]]] = {
    **SERVER_OPTION_TABLE,
    "--udp": (),
}

# Signals whose Python handlers must run in the main thread (blocked in the
# connection threads, so the kernel delivers them to the main thread).
_MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Terminated(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- command line


def parse_command_line(argv: list[str]) -> tuple[ServerOptions, bool, int]:
    """(options, udp, port) from argv, or exit: usage on stdout / bad value on stderr."""
    argv0 = argv[0] if argv else PROG
    try:
        positionals, scanned = scan(argv[1:], ECHO_OPTION_TABLE)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    udp = scanned.pop("--udp", None) is not None
    backlog_given = "--backlog" in scanned
    opts = ServerOptions.from_scanned(scanned)
    if not backlog_given:
        opts.backlog = DEFAULT_BACKLOG
    if len(positionals) != (0 if opts.unix is not None else 1):
        usage(argv0, "<port>")
    if opts.unix is not None:
        if opts.ipv6:
            error_handling(f"{argv0}: --unix and --ipv6 exclude each other")
        if udp:
            error_handling(f"{argv0}: --unix and --udp exclude each other")
        return opts, udp, 0
    try:
        port = parse_port(positionals[0])
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    return opts, udp, port


# --------------------------------------------------------------------------- signals


def _install_sigterm() -> object:
    """SIGTERM raises ``_Terminated`` in the main thread.

    Returns the previous handler (for ``_restore_sigterm``), or None when main()
    does not run in the main thread (then SIGTERM keeps its default action).
    """

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up is enough
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (in-process use)
        return None


def _restore_sigterm(previous: object) -> None:
    """Put back the SIGTERM handler (matters only when main() runs in-process)."""
    if previous is None:
        return
    try:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        pass


# --------------------------------------------------------------------------- one connection


def _connection_setsockopts(opts: ServerOptions) -> list[tuple[int, int, int | bytes]]:
    """The per-connection options: linger/keepalive, and SO_OOBINLINE again."""
    calls = connection_setsockopts(opts)
    if opts.oobinline:
        calls.append((socket.SOL_SOCKET, socket.SO_OOBINLINE, 1))
    return calls


def serve_connection(conn: socket.socket, opts: ServerOptions) -> None:
    """Echo on one accepted connection until EOF or an error, then close it."""
    try:
        try:
            for level, optname, value in _connection_setsockopts(opts):
                conn.setsockopt(level, optname, value)
        except OSError:
            warn("setsockopt() error")
            return
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        state = EchoConnection()
        while True:
            action = state.next_action()
            if action is Action.RECV:
                try:
                    n = conn.recv_into(buf)
                except OSError:
                    state.failed()
                    continue
                state.received(view[:n])
            elif action is Action.SEND:
                try:
                    state.sent(conn.send(state.pending_output(), _MSG_NOSIGNAL))
                except OSError:
                    state.failed()
            elif action is Action.CLOSE:
                # After EOF everything has been echoed and nothing is left unread:
                # close() sends FIN.  After an error the peer is gone anyway.
                conn.close()
                state.closed()
            else:  # Action.DONE
                break
    finally:
        _close(conn)  # already closed on the normal path; closing twice is harmless


def _start_worker(conn: socket.socket, opts: ServerOptions, mask_signals: bool) -> None:
    worker = threading.Thread(target=serve_connection, args=(conn, opts), daemon=True)
    # The new thread inherits the signal mask of the thread that starts it.
    old_mask = (
        signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS) if mask_signals else None
    )
    try:
        worker.start()
    except RuntimeError:  # no more threads: refuse this client, keep serving the others
        _close(conn)
        warn("cannot start a thread for a new connection")
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# --------------------------------------------------------------------------- servers


def serve_stream(opts: ServerOptions, port: int) -> int:
    """TCP (or AF_UNIX) echo; returns 0 on SIGTERM or exits through error_handling."""
    unix_path = UnixPath(opts.unix) if opts.unix is not None else None
    address: str | tuple[str, int]
    if unix_path is not None:
        unix_path.remove_stale()
        address = unix_path.path
    else:
        address = ("::" if opts.ipv6 else "0.0.0.0", port)

    listener: socket.socket | None = None
    previous_sigterm = _install_sigterm()

    def clean_up() -> None:
        _close(listener)
        if unix_path is not None:
            unix_path.remove()

    def fail(msg: str) -> NoReturn:
        clean_up()
        error_handling(msg)

    try:
        try:
            listener = socket.socket(opts.family, socket.SOCK_STREAM)
        except OSError:
            fail("socket() error")
        try:
            apply_listener_options(listener, opts)
        except OSError:
            fail("setsockopt() error")
        try:
            listener.bind(address)
        except OSError:
            fail("bind() error")
        if unix_path is not None:
            unix_path.bound()
        try:
            listener.listen(opts.backlog)
        except OSError:
            fail("listen() error")
        while True:
            try:
                conn, _peer = listener.accept()
            except ConnectionAbortedError:  # the client gave up before accept(): next one
                continue
            except OSError:
                fail("accept() error")
            _start_worker(conn, opts, mask_signals=previous_sigterm is not None)
    except _Terminated:
        return 0
    finally:
        clean_up()
        _restore_sigterm(previous_sigterm)


def serve_datagram(opts: ServerOptions, port: int) -> int:
    """UDP echo; returns 0 on SIGTERM or exits through error_handling."""
    sock: socket.socket | None = None
    previous_sigterm = _install_sigterm()

    def fail(msg: str) -> NoReturn:
        _close(sock)
        error_handling(msg)

    try:
        try:
            sock = socket.socket(opts.family, socket.SOCK_DGRAM)
        except OSError:
            fail("socket() error")
        try:
            apply_listener_options(sock, opts)
        except OSError:
            fail("setsockopt() error")
        try:
            sock.bind(("::" if opts.ipv6 else "0.0.0.0", port))
        except OSError:
            fail("bind() error")
        while True:
            # A failed recvfrom/sendto loses one datagram (UDP may), never the server.
            try:
                data, peer = sock.recvfrom(DATAGRAM_BUFFER_SIZE)
            except OSError:
                continue
            try:
                sock.sendto(data, _MSG_NOSIGNAL, peer)
            except OSError:
                pass
    except _Terminated:
        return 0
    finally:
        _close(sock)
        _restore_sigterm(previous_sigterm)


def main(argv: list[str] | None = None) -> int:
    """``PROG [options] <port>``; argv[0] is the program name used in messages."""
    if argv is None:
        argv = sys.argv
    opts, udp, port = parse_command_line(list(argv))
    try:
        return serve_datagram(opts, port) if udp else serve_stream(opts, port)
    except KeyboardInterrupt:  # Ctrl-C in the foreground: end quietly (listener closed)
        return 130


if __name__ == "__main__":
    sys.exit(main())
