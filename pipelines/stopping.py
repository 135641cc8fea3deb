"""Stopping a running command on SIGINT (Ctrl-C) or SIGTERM (`kill`, `docker stop`, `timeout`)
the same way: workers ended, temporary files removed, one line, exit 128 + the signal.

Within `signals_raise`, SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated` (a
KeyboardInterrupt), so both unwind one path through Beam (whose runner stops its workers on
the way out) and through detrec's cleanup. Without it SIGTERM kills the launcher outright: its
worker processes lose their connection, print gRPC tracebacks and finish the shard in hand
after the launcher is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterator

from detrec.core.errors import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt."""


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's code for a process ended by the signal behind `stop` (143 or 130)."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def signal_name(stop: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"


_BEFORE_RAISE: list = []  # what a stop does first (children_end_first), innermost last


def _raise(signum: int, _frame) -> None:
    for action in reversed(_BEFORE_RAISE):
        action()
    # With a message: Beam re-raises an exception from a DoFn (the in-memory runner runs them
    # here, in the main thread) as `type(exc)(message + step name)`, and as a RuntimeError
    # when that fails, which a bare KeyboardInterrupt() would.
    raise (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise (only the main thread can take signals)."""
    with _handlers(_raise):
        yield


@contextlib.contextmanager
def _handlers(handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)  # None: set outside Python


@contextlib.contextmanager
def children_end_first(spared: set[int]) -> Iterator[None]:
    """Within the block a stop SIGKILLs this process's children (but `spared`) in the signal
    handler itself, before anything unwinds: Beam's runner, unwinding, releases the workers'
    bundles, and a worker still alive then prints a traceback (`KeyError: 'bundle_9'`).
    The runner's threads that watch those workers then fail ("Worker subprocess exited with
    return code -9", a broken data or control stream) and log it: after a stop that is the
    expected end, so neither their tracebacks nor Beam's log lines are shown until the block
    ends (detrec's one line says what happened)."""
    hook, beam_log = threading.excepthook, logging.getLogger("apache_beam")
    level = beam_log.level  # its modules' loggers (NOTSET) take their level from it

    def stop_children() -> None:
        threading.excepthook = lambda _args: None
        beam_log.setLevel(logging.CRITICAL + 1)
        end_child_processes(spared)

    _BEFORE_RAISE.append(stop_children)
    try:
        yield
    finally:
        _BEFORE_RAISE.remove(stop_children)
        threading.excepthook = hook
        beam_log.setLevel(level)


def second_signal_kills() -> contextlib.AbstractContextManager:
    """For a cleanup after a stop: another SIGINT or SIGTERM ends the process at once (the
    signal's default action) instead of raising into the cleanup half done."""
    return _handlers(signal.SIG_DFL)


def child_processes() -> set[int]:
    """The processes this one started, and theirs (Linux; empty elsewhere)."""
    return set(_descendants(os.getpid()))


def end_child_processes(spared: set[int] = frozenset(), timeout: float = 10.0) -> None:
    """SIGKILLs the processes this one started (Beam's workers, the shells around them) but
    `spared` (those that were there before the job), and waits until none of them can write
    any more (gone, or a zombie for its parent to reap)."""
    doomed = [pid for pid in _descendants(os.getpid()) if pid not in spared]
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.01)


def process_table() -> dict[int, list[str]]:
    """pid -> its /proc/PID/stat fields after the command name (state, ppid, pgrp, ...), for
    every process visible in /proc (Linux); {} elsewhere."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat:
                    out[int(entry.name)] = stat
    return out


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc (Linux); {} elsewhere."""
    return {pid: int(stat[1]) for pid, stat in process_table().items()}


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the name, in parentheses, may hold spaces


def _descendants(root: int) -> list[int]:
    parents = _parents()
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def running(pid: int) -> bool:
    """Whether `pid` can still run (neither gone nor a zombie)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def check_port(port: int) -> None:
    """A server's --port, as one line when it is out of range."""
    if not 0 <= port < 65536:
        raise UserError(f"--port {port} outside 0..65535")


def serve_until_stopped(stop_server: Callable[[], object], ready_line: str) -> int:
    """For a command that runs a server: prints the ready line, then waits for SIGINT or
    SIGTERM (Ctrl-C, `docker stop`) and stops the server cleanly."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(ready_line, flush=True)
    # Wake up now and then: the kernel may deliver the signal to one of the server's threads,
    # and then Python runs its handler only when the main thread next wakes (an untimed wait
    # could sleep through SIGTERM for good).
    while not stop.wait(0.5):
        pass
    stop_server()
    print("stopped", flush=True)
    return 0
