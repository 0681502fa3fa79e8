"""The pre-fork master: fork workers, reap and respawn them, dispatch signals.

Rules (gunicorn's arbiter): signal handlers do nothing but wake the main loop (a
wakeup pipe); the loop reads which signals arrived and calls ``handle_<name>()``, the only
place that logs about them. No event loop ever exists in this process, so forking is
safe; each worker builds its own loop after the fork. The first worker of each slot (worker
number) binds that slot's listening sockets with ``SO_REUSEPORT``, so the kernel spreads
connections over the slots, and hands them to the master, which keeps them for the slot's later
workers: a respawned worker or the next generation of a reload serves the very same sockets.
Closing a socket of a ``SO_REUSEPORT`` group resets the connections waiting in its accept queue;
a slot's sockets therefore stay open until the slot itself goes (a stop, one worker fewer).

Signals: TERM/INT graceful stop (workers finish open transactions until the graceful
timeout, then are killed); QUIT quick stop; HUP reload (a new generation of workers starts
with the configuration re-read, then the old one drains); TTIN/TTOU one worker more/fewer.

Exit codes: a worker that exits with :data:`WORKER_BOOT_ERROR` (bad configuration, port in
use) stops the master with that message instead of a respawn loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .heartbeat import Heartbeat

__all__ = ["Arbiter", "WorkerContext", "WORKER_BOOT_ERROR", "HaltServer"]

log = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3  # a worker could not start: halting beats respawning forever
_SIGNALS = {
    signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGQUIT: "quit", signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld",
}


class HaltServer(Exception):
    """Stop the master with a message and an exit status."""

    def __init__(self, reason: str, status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class WorkerContext:
    """What a worker process receives: its number, generation and heartbeat, and its slot's
    listening sockets (those the slot's earlier workers handed over; none the first time)."""

    number: int
    generation: int
    heartbeat: Heartbeat
    ppid: int
    sockets: list[socket.socket] = field(default_factory=list)
    channel: socket.socket | None = None  # to the master

    def hand_over(self, fds: list[int]) -> None:
        """Give the master the listening sockets this worker serves, for the slot's next workers.

        Call it once listening, before the first heartbeat (then a ready worker's sockets are
        always with the master when it rolls the generation).
        """
        if self.channel is not None:
            socket.send_fds(self.channel, [b"listening"], fds)


@dataclass
class _Worker:
    pid: int
    context: WorkerContext
    started: float
    born: float  # the heartbeat file's ctime at the fork: a later one means "listening"
    channel: socket.socket  # the master's end of WorkerContext.channel
    stopping: bool = False
    killed_at: float | None = None

    @property
    def ready(self) -> bool:
        """The worker has bound its socket and beat at least once."""
        return self.context.heartbeat.last_update() > self.born


@dataclass
class Arbiter:
    """The master process.

    Args:
        worker_main: runs in the child after the fork; returns its exit status.
        workers: how many workers to keep.
        graceful_timeout: seconds a stopping worker may take to finish its sessions.
        heartbeat_timeout: seconds without a heartbeat before a worker is killed.
        reload_check: called on SIGHUP before new workers start; raising keeps the old ones.
        on_reaped: called with a reaped worker's pid and whether its exit was unexpected
            (metrics: the worker's files are marked dead, restarts counted).
        drain_delay: seconds between a graceful stop's start (``/readyz`` 503, the agent says
            ``drain``) and the workers' stop, so a load balancer that asks every few seconds
            moves new clients away while this host still takes them.
        respawn_backoff: seconds before a crashed worker is replaced; doubled for each worker
            that dies within 10 s of its start, up to ``respawn_backoff_max``; back to 0 once
            a worker lived longer.
    """

    worker_main: Callable[[WorkerContext], int]
    workers: int = 1
    graceful_timeout: float = 30.0
    heartbeat_timeout: float = 30.0
    reload_check: Callable[[], None] | None = None
    on_reaped: Callable[[int, bool], None] | None = None
    respawn_backoff: float = 0.1
    respawn_backoff_max: float = 5.0
    drain_delay: float = 0.0
    _children: dict[int, _Worker] = field(default_factory=dict)
    _generation: int = 0
    _stopping: bool = False
    _workers_stop_at: float = 0.0  # a graceful stop waits for its drain_delay until then
    _respawn_delay: float = 0.0
    _next_spawn: float = 0.0
    # A reload's old generation, retired once the new one is ready (the port never closes).
    _outgoing: list[_Worker] = field(default_factory=list)
    _incoming: list[_Worker] = field(default_factory=list)
    _reload_deadline: float = 0.0
    # Each slot's listening sockets, as its last worker handed them over.
    _sockets: dict[int, list[socket.socket]] = field(default_factory=dict)

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the process exit status."""
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)
        signal.set_wakeup_fd(self._pipe_w)
        for sig in _SIGNALS:
            signal.signal(sig, _noop)  # the wakeup fd carries the number; the loop dispatches
        log.info("master started", extra={"pid": os.getpid(), "workers": self.workers})
        try:
            self._spawn_missing()
            while True:
                for received in self._wait_for_signals(self._next_pass()):
                    getattr(self, f"handle_{_SIGNALS[signal.Signals(received)]}")()
                self._reap()
                self._collect()
                if self._workers_stop_at and time.monotonic() >= self._workers_stop_at:
                    self._stop_workers(graceful=True)
                if self._stopping and not self._children:
                    log.info("master stopped")
                    return 0
                self._murder_stuck()
                if self._outgoing:
                    self._retire_when_ready()
                if not self._stopping:
                    self._spawn_missing()
        except HaltServer as halt:
            log.error("halting: %s", halt.reason)
            self._stop(graceful=False)
            return halt.status
        finally:
            signal.set_wakeup_fd(-1)

    def _next_pass(self) -> float:
        """Seconds until the loop must run again: 1, or less when a respawn's backoff ends sooner."""
        if self._outgoing:
            return 0.1  # a reload: retire the old generation as soon as the new one listens
        if self._workers_stop_at:
            return min(1.0, max(0.0, self._workers_stop_at - time.monotonic()))
        if self._stopping or len(self._live()) >= self.workers:
            return 1.0
        return min(1.0, max(0.0, self._next_spawn - time.monotonic()))

    def _wait_for_signals(self, timeout: float) -> list[int]:
        try:
            ready, _, _ = select.select([self._pipe_r], [], [], timeout)
        except InterruptedError:
            ready = [self._pipe_r]
        if not ready:
            return []
        try:
            data = os.read(self._pipe_r, 64)
        except BlockingIOError:
            return []
        return [sig for sig in data if sig in _SIGNALS]

    # -- signal handlers (the only place that logs about signals) -----------------------

    def handle_term(self) -> None:
        log.info("SIGTERM: graceful stop (up to %.0f s)", self.graceful_timeout)
        self._stop(graceful=True)

    def handle_int(self) -> None:
        if self._stopping:
            log.info("second SIGINT: quick stop")
            self._stop(graceful=False)
        else:
            log.info("SIGINT: graceful stop (up to %.0f s)", self.graceful_timeout)
            self._stop(graceful=True)

    def handle_quit(self) -> None:
        log.info("SIGQUIT: quick stop")
        self._stop(graceful=False)

    def handle_hup(self) -> None:
        if self._stopping:
            return
        if self.reload_check is not None:
            try:
                self.reload_check()
            except Exception as exc:  # a broken new configuration must not take the service down
                log.error("SIGHUP: new configuration refused, keeping the running workers: %s", exc)
                return
        log.info("SIGHUP: starting a new generation of %d workers", self.workers)
        self._collect()  # the sockets of workers that became ready since the last pass
        old = self._live()
        for worker in old:
            worker.stopping = True  # their numbers go to the new generation
        self._generation += 1
        self._incoming = [self._spawn(self._free_number()) for _ in range(self.workers)]
        self._outgoing += old
        self._reload_deadline = time.monotonic() + max(self.heartbeat_timeout, 10.0)

    def _retire_when_ready(self) -> None:
        """Stop the old generation once every new worker listens (or the wait is over)."""
        incoming = [w for w in self._incoming if w.pid in self._children]
        if incoming and not all(w.ready for w in incoming) and time.monotonic() < self._reload_deadline:
            return
        for worker in self._outgoing:  # they stop accepting and drain; the new ones already listen
            if worker.pid in self._children:
                self._signal(worker, signal.SIGTERM)
                worker.killed_at = time.monotonic() + self.graceful_timeout
        self._outgoing, self._incoming = [], []

    def handle_ttin(self) -> None:
        self.workers += 1
        log.info("SIGTTIN: %d workers", self.workers)

    def handle_ttou(self) -> None:
        if self.workers > 1:
            self.workers -= 1
            log.info("SIGTTOU: %d workers", self.workers)
            live = sorted((w for w in self._children.values() if not w.stopping), key=lambda w: w.started)
            if len(live) > self.workers:
                self._retire(live[-1])

    def handle_chld(self) -> None:
        pass  # reaping happens on every pass of the loop

    # -- workers ------------------------------------------------------------------------

    def _live(self) -> list[_Worker]:
        return [w for w in self._children.values() if not w.stopping]

    def _free_number(self) -> int:
        used = {w.context.number for w in self._live()}
        waiting = sorted(n for n in self._sockets if n not in used)  # a slot's sockets wait for a worker
        return waiting[0] if waiting else next(n for n in range(len(used) + 1) if n not in used)

    def _spawn_missing(self) -> None:
        now = time.monotonic()
        while len(self._live()) < self.workers and now >= self._next_spawn:
            self._spawn(self._free_number())

    def _spawn(self, number: int) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)  # (recv_fds ignores its flags before Python 3.12)
        context = WorkerContext(number, self._generation, Heartbeat(), os.getpid(),
                                list(self._sockets.get(number, ())), theirs)
        born = context.heartbeat.last_update()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the master's loop
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                os.close(self._pipe_r)
                os.close(self._pipe_w)
                ours.close()
                for other in self._children.values():
                    other.channel.close()
                for slot, sockets in self._sockets.items():
                    for sock in sockets if slot != number else ():
                        sock.close()  # another slot's: it must go when that slot goes
                status = self.worker_main(context)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed while starting", number)
                status = WORKER_BOOT_ERROR
            finally:
                logging.shutdown()  # log lines a handler still holds (logs.py writes per loop pass)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        theirs.close()
        worker = self._children[pid] = _Worker(pid, context, time.monotonic(), born, ours)
        log.info("worker %d started", number, extra={"worker_pid": pid, "generation": self._generation})
        return worker

    def _retire(self, worker: _Worker) -> None:
        self._close_slot(worker.context.number)  # one worker fewer: its slot goes
        self._signal(worker, signal.SIGTERM)
        worker.stopping = True
        worker.killed_at = time.monotonic() + self.graceful_timeout

    def _signal(self, worker: _Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._children.get(pid)
            if worker is None:
                continue  # not ours (running as PID 1 reaps orphans too)
            self._collect()  # what it handed over before it died is its slot's still
            del self._children[pid]
            worker.context.heartbeat.close()
            worker.channel.close()
            self._reaped(worker, status)

    def _collect(self) -> None:
        """Keep the listening sockets live workers handed over, each for its worker's slot."""
        for worker in list(self._children.values()):
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(worker.channel, 64, 64)  # non-blocking
                except OSError:  # nothing (more) to read
                    break
                if not data:  # the worker's end is closed
                    break
                sockets = [socket.socket(fileno=fd) for fd in fds]
                for sock in sockets:
                    sock.set_inheritable(False)  # forked workers get them; exec'd programs must not
                if worker.stopping or self._stopping:  # a late word from a worker on its way out
                    for sock in sockets:
                        sock.close()
                    continue
                self._close_slot(worker.context.number)
                self._sockets[worker.context.number] = sockets

    def _close_slot(self, number: int) -> None:
        """Close the master's copies of a slot's sockets (a worker still serving them keeps its own)."""
        for sock in self._sockets.pop(number, ()):
            sock.close()

    @property
    def draining(self) -> bool:
        """A graceful stop has begun (for the agent check; read from a thread)."""
        return self._stopping

    def ready(self) -> bool:
        """Serving and not draining: every live worker listens (for /readyz; read from a thread)."""
        if self._stopping:
            return False
        live = [w for w in list(self._children.values()) if not w.stopping]
        return bool(live) and all(w.ready for w in live)

    def gauges(self) -> dict[str, float]:
        """The master's gauges for ``/metrics`` (read from a thread)."""
        live = [w for w in list(self._children.values()) if not w.stopping]
        return {"workers": float(self.workers), "workers_ready": float(sum(w.ready for w in live)),
                "draining": float(self._stopping)}

    def _reaped(self, worker: _Worker, status: int) -> None:
        if self.on_reaped is not None:
            self.on_reaped(worker.pid, not (worker.stopping or self._stopping))
        number = worker.context.number
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            hint = " (out of memory?)" if sig == signal.SIGKILL and worker.killed_at is None else ""
            log.warning("worker %d (pid %d) killed by signal %d%s", number, worker.pid, sig, hint)
        else:
            code = os.WEXITSTATUS(status)
            if code == WORKER_BOOT_ERROR and not worker.stopping:
                raise HaltServer(f"worker {number} failed to boot (exit {code}); see its error above", code)
            if worker.stopping or self._stopping:
                log.info("worker %d (pid %d) exited with %d", number, worker.pid, code)
                return
            log.warning("worker %d (pid %d) exited unexpectedly with %d", number, worker.pid, code)
        if self._stopping or worker.stopping:
            return
        # Respawn with a backoff that grows when workers die young and resets when they live.
        lived = time.monotonic() - worker.started
        self._respawn_delay = 0.0 if lived > 10 else min(
            self.respawn_backoff_max, self._respawn_delay * 2 or self.respawn_backoff)
        self._next_spawn = time.monotonic() + self._respawn_delay

    def _murder_stuck(self) -> None:
        now = time.monotonic()
        wall = time.time()
        for worker in list(self._children.values()):
            if worker.killed_at is not None and now >= worker.killed_at:
                log.warning("worker %d (pid %d) past its graceful timeout: SIGKILL", worker.context.number, worker.pid)
                self._signal(worker, signal.SIGKILL)
                worker.killed_at = now + 3600
                continue
            quiet = wall - worker.context.heartbeat.last_update()
            if not worker.stopping and now - worker.started > self.heartbeat_timeout and quiet > self.heartbeat_timeout:
                log.error("worker %d (pid %d) silent for %.0f s: killing it", worker.context.number, worker.pid, quiet)
                self._signal(worker, signal.SIGKILL)
                worker.stopping = True
                worker.killed_at = now + 3600

    def _stop(self, *, graceful: bool) -> None:
        first = not self._stopping
        self._stopping = True  # from now /readyz answers 503 and the agent says "drain"
        if graceful and first and self.drain_delay > 0:
            log.info("draining: the workers stop in %.1f s", self.drain_delay)
            self._workers_stop_at = time.monotonic() + self.drain_delay
            return
        self._stop_workers(graceful=graceful)

    def _stop_workers(self, *, graceful: bool) -> None:
        self._workers_stop_at = 0.0
        for number in list(self._sockets):
            self._close_slot(number)  # the port closes as soon as the workers close theirs
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        deadline = time.monotonic() + (self.graceful_timeout if graceful else 5.0)
        for worker in self._children.values():
            self._signal(worker, sig)
            worker.stopping = True
            worker.killed_at = min(worker.killed_at or deadline, deadline)
        if not graceful:
            while self._children and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            for worker in list(self._children.values()):
                self._signal(worker, signal.SIGKILL)
            while self._children:
                try:
                    pid, _status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        raise
                    continue
                gone = self._children.pop(pid, None)
                if gone is not None:
                    gone.context.heartbeat.close()
                    gone.channel.close()


def _noop(signum: int, frame: object) -> None:
    """Signal handler: nothing. ``set_wakeup_fd`` already wrote the signal number."""
