"""The process runner: targets run in their own process group and never outlive us.

Every target is started
  * in a new session (its own process group), so one killpg() ends it and anything it forked;
  * behind `setpriv --pdeathsig KILL` when available, so that even if the test process
    itself dies (SIGKILL, crash, xdist worker lost) the kernel kills the target;
  * with stdout/stderr captured to files (evidence, and no pipe can fill up and block it);
  * with the target's declared environment added to ours;
  * with RLIMIT_CORE = 0 (a crashing mutant must not litter core files); it is set in our
    own process and inherited, because a preexec_fn would run Python between fork and
    exec while other threads (the capture reader) may hold locks.
Signals go to the process group, as a service manager sends them: a wrapper that does
not exec (`npm start`, a launcher script) passes nothing on, and what it started must
get the signal too.  A program has ended when its whole group has.
`Runner.close()` kills every group it started; an atexit hook and SIGTERM/SIGHUP handlers
do the same for whatever is still alive, so Ctrl-C, failures and normal ends all clean up.
"""

from __future__ import annotations

import atexit
import os
import resource
import select
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

# Process groups still alive, across all runners of this process (for atexit/signals).
_LIVE: dict[int, Proc] = {}


def _setpriv() -> list[str]:
    path = shutil.which("setpriv")
    if path is None:
        return []
    return [path, "--pdeathsig", "KILL", "--"]


_PDEATH_PREFIX = _setpriv()


def pdeath_guard(argv: Sequence[str]) -> list[str]:
    """`argv` behind the pdeathsig guard: for a target that runs as the child of a
    wrapper (strace): a tracer killed with SIGKILL detaches its tracee, which must
    die with it rather than live on."""
    return [*_PDEATH_PREFIX, *argv]


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    ended: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        rc = self.popen.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def wait(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or None on timeout.
        Returns as soon as the process ends (a pidfd becomes readable), where
        Popen.wait(timeout) would poll with sleeps of up to 50 ms."""
        rc = self.popen.poll()
        if rc is None and timeout > 0 and not _await_exit(self.pid, timeout):
            return None
        try:
            rc = self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None
        if self.ended is None:
            self.ended = time.monotonic()
        return rc

    def status(self) -> str:
        return describe_status(self.poll())

    def stdout(self) -> bytes:
        return _read(self.stdout_path)

    def stderr(self) -> bytes:
        return _read(self.stderr_path)

    def stderr_tail(self, limit: int = 600) -> str:
        data = self.stderr()
        text = data[-limit:].decode("utf-8", "replace")
        return ("…" if len(data) > limit else "") + text

    def signal(self, sig: int) -> None:
        """Send `sig` to the process group (the target and whatever it started
        without a new session: a launcher's child, a forked worker)."""
        if self._group_gone():
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def _group_gone(self) -> bool:
        """Whether nothing of the group can be left.  Once the leader is reaped its
        pid may be handed out again, and a new session leader would own a group of
        that number: the pid stays ours only while some member of our group lives
        (the kernel keeps a process group's id in use until it is empty)."""
        return self.popen.returncode is not None and not self.group_alive()

    def group_alive(self) -> list[int]:
        """The pids of the group still running (zombies are dead: their reaper is
        not us once their parent has gone)."""
        return group_members(self.pid)

    def wait_group(self, timeout: float) -> int | None:
        """Wait until the process and every other member of its group have ended:
        its exit status (negative: killed by that signal), or None if something
        of the group still runs after `timeout` s."""
        deadline = time.monotonic() + max(0.0, timeout)
        rc = self.wait(timeout)
        if rc is None:
            return None
        delay = 0.001
        while self.group_alive():
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return rc

    def kill(self) -> None:
        """SIGKILL the whole process group and any descendant that escaped it; reap."""
        descendants: list[psutil.Process] = []
        if self.popen.poll() is None:  # not reaped: the pid is still ours
            try:
                descendants = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                pass
        group = not self._group_gone()
        if group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in descendants:
            try:
                d.kill()
            except psutil.Error:
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            pass
        # SIGKILL is delivered, not done: a descendant still has to be scheduled to
        # die (slow on a loaded machine).  Wait until each is gone or a zombie (its
        # reaper is not us), so that nothing of the target runs after kill().
        deadline = time.monotonic() + 5
        for d in descendants:
            while time.monotonic() < deadline:
                try:
                    if d.status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.Error:
                    break
                time.sleep(0.005)
        # Members of the group whose parent (a launcher) ended earlier are no
        # descendants any more: wait for them the same way.
        while group and group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.ended is None:
            self.ended = time.monotonic()
        _LIVE.pop(self.pid, None)


def _await_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for our unreaped child `pid` to end: False if it is
    still running then; True when it ended, or when that cannot be waited for
    here (no pidfd: the caller's Popen.wait then polls as it always did)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000) + 1)))
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    # An unreadable output file is the suite's trouble (its workdir is gone or
    # full): it raises, it is not read as "the program printed nothing".
    return path.read_bytes()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(int(name))
    return out


def child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Bare program names (e.g. the reference's console scripts) resolve in our own
    # scripts folder first, even when the virtualenv is not activated.
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", os.defpath)])
    # A Python target must not write .pyc next to our sources or buffer its output.
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _no_core_files() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


class Runner:
    """Owns the processes of one test; close() kills them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self._seq = 0
        _no_core_files()

    def spawn(self, argv: Sequence[str], *, name: str = "target", cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> Proc:
        """Start `argv` (argv[0] looked up like a shell does, relative to `cwd`),
        with `env` added to our environment."""
        self._seq += 1
        stem = f"{self._seq:02d}-{name}"
        out = self.workdir / f"{stem}.stdout"
        err = self.workdir / f"{stem}.stderr"
        cmd = [*_PDEATH_PREFIX, *argv]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            try:
                popen = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=cwd,
                    env=child_env(env), start_new_session=True, close_fds=True)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"cannot run {argv[0]!r}: {e.strerror}") from None
        proc = Proc(name, list(argv), popen, out, err)
        self.procs.append(proc)
        _LIVE[proc.pid] = proc
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None or proc.pid in _LIVE:
                proc.kill()


_CLEANUPS: list[Callable[[], None]] = []


def on_exit(fn: Callable[[], None]) -> None:
    """Run `fn` when this process ends normally, on Ctrl-C, or on SIGTERM/SIGHUP
    (after every target is dead): e.g. remove scratch directories."""
    _CLEANUPS.append(fn)


def kill_all() -> None:
    for proc in list(_LIVE.values()):
        proc.kill()
    while _CLEANUPS:
        try:
            _CLEANUPS.pop()()
        except Exception:  # noqa: S110 - best effort at exit
            pass


def _on_signal(signum: int, frame: object) -> None:
    kill_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(kill_all)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) in (signal.SIG_DFL, None):
        try:
            signal.signal(_sig, _on_signal)
        except ValueError:  # not the main thread
            pass
