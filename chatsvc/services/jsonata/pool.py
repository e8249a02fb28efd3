"""JSONata runs in evaluator processes, stopped hard at its time limit (see docs/decisions.md).

Every evaluation (prompt placeholders, ``transform`` nodes) goes through ``evaluate_many``:
one round trip to an idle child of this process's pool evaluates a whole template's
expressions. The child applies the cooperative bounds of ``expressions``; on top, the
server waits for each answer no longer than the expression's time limit (plus a small
grace) and otherwise kills the child — a single built-in call (a catastrophic regex, a
huge range or sort) cannot hold the server, whatever it does. A child stuck at its memory
cap is killed at once. A killed or crashed child is replaced in the background; the
expression it was running gets a timeout or an error.

Concurrency: a child serves one caller at a time. Callers wait for a free child no longer
than their own time limit (then: the same timeout reason).

Sharing out: a caller names its tenant (the run's team). One tenant holds at most half of
the children at once (``share``), so a team flooding the pool with runaway expressions
waits for its own slots and every other team still finds a child. An expression that ran
out of time becomes a suspect for a while: a tenant runs at most one batch holding a
suspect at once, so a runaway template started many times occupies one child and the
tenant's other templates still run.

Waiting for a child's answer is ``select`` on its pipe: cooperative under gevent (patched), a plain blocking wait in a
thread otherwise. Children are fresh interpreters (``subprocess``), never forks of a
process running greenlets; no multiprocessing pool or helper thread is involved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from chatsvc.services.jsonata.expressions import OUT_OF_MEMORY, ExpressionError

log = logging.getLogger(__name__)

GRACE_SECONDS = 0.1  # beyond an expression's own limit, for the round trip, before the kill
# An evaluation still running is checked every DEMOTE_CHECK_SECONDS; once it has kept a CPU
# busy for BUSY_SHARE of a whole check interval it yields the CPU to everyone else (nice 19).
# An evaluation that is merely slow because the machine is busy (waiting, not computing)
# keeps its priority, and its child stays in the pool.
DEMOTE_CHECK_SECONDS = 0.05
BUSY_SHARE = 0.4
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SUSPECT_SECONDS = 600  # an expression that ran out of time stays a suspect this long
MAX_SUSPECTS = 1000
STARTUP_SECONDS = 15  # a new evaluator must say "ready" within this
# A child still evaluating with its address space this close to its cap is stuck allocating
# (CPython can spin there until killed rather than raise MemoryError): it is stopped at the
# next check, as out of memory, instead of holding its evaluator until the time limit.
MEMORY_FULL_SHARE = 0.95
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
DEFAULT_WORKERS = 4
DEFAULT_MEMORY_MB = 512


class _ChildGone(Exception):
    """The evaluator process exited or closed its pipe."""


class _MemoryFull(Exception):
    """The evaluator's address space reached its cap while it was still evaluating."""


class _Child:
    """One evaluator process and its pipes."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.process = subprocess.Popen(
            [sys.executable, WORKER_SCRIPT, str(memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        self._fd = self.process.stdout.fileno()
        self._buffer = b""
        self.demoted = False
        try:
            ready = self.read_line(time.monotonic() + STARTUP_SECONDS)
        except _ChildGone:
            ready = None
        if ready != b"ready":
            self.kill()
            raise OSError(f"jsonata evaluator did not start (exit code {self.process.returncode})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, request: bytes) -> None:
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _ChildGone() from exc

    def read_line(self, deadline: float) -> bytes | None:
        """The next reply line, or None if none arrived by ``deadline``."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise _ChildGone()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def cpu_seconds(self) -> float | None:
        """CPU time the child has used so far (Linux ``/proc``); None where that is unknown."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def memory_full(self) -> bool:
        """Whether the child's address space is at its cap (Linux ``/proc``; False where unknown)."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmSize:"):
                        return int(line.split()[1]) >= MEMORY_FULL_SHARE * self.memory_mb * 1024
        except (OSError, IndexError, ValueError):
            pass
        return False

    def await_reply(self, deadline: float) -> bytes | None:
        """The next reply line, or None at ``deadline``; a child that keeps a CPU busy
        meanwhile is demoted (where CPU time is unknown: once it runs past one check).
        Raises _MemoryFull once the child is stuck at its memory cap."""
        cpu_before = None
        while True:
            line = self.read_line(min(deadline, time.monotonic() + DEMOTE_CHECK_SECONDS))
            if line is not None:
                return line
            if self.memory_full():
                raise _MemoryFull()
            if time.monotonic() >= deadline:
                return None
            cpu = self.cpu_seconds()
            if cpu is None or (cpu_before is not None and cpu - cpu_before >= BUSY_SHARE * DEMOTE_CHECK_SECONDS):
                self.demote()
            cpu_before = cpu

    def demote(self) -> None:
        """Lowest CPU priority (nice 19): a runaway burns only what nothing else wants."""
        if not self.demoted:
            self.demoted = True
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, 19)
            except OSError:
                pass

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            log.warning("jsonata evaluator %s did not exit after SIGKILL", self.pid)
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _digest(expr: str) -> bytes:
    """A suspect is remembered by digest: expressions can be as long as a request body."""
    return hashlib.blake2b(expr.encode(), digest_size=16).digest()


class EvaluatorPool:
    """Up to ``size`` evaluator processes, each used by one caller at a time; one tenant uses at most ``share``."""

    def __init__(self, size: int = DEFAULT_WORKERS, memory_mb: int = DEFAULT_MEMORY_MB) -> None:
        self.size = size
        self.share = max(1, size // 2)
        self.memory_mb = memory_mb
        self._free = threading.Semaphore(size)  # gevent's under gunicorn (created after patching)
        # Slot key (a tenant, or a tenant's suspect lane) -> its semaphore, made on first use; a
        # release wakes one waiter of that key only. One entry per team that ever evaluated.
        self._lanes: dict[Hashable, threading.Semaphore] = {}
        self._held: dict[Hashable, int] = {}  # slot key -> held now (for held())
        self._lock = threading.Lock()  # guards _idle, _suspects, _lanes and _held
        self._suspects: OrderedDict[bytes, float] = OrderedDict()  # expression digest -> suspect until (monotonic)
        self._idle: list[_Child] = []
        self._closed = False
        self._starters: list[threading.Thread] = []  # warm_up(), joined by close()

    # --- callers ---------------------------------------------------------------

    def evaluate_many(self, exprs: list[str], data: Any, *, timeout_ms: int, total_ms: int,
                      max_depth: int = 100, tenant: Hashable | None = None) -> list[Any | ExpressionError]:
        """Each expression's value, or the ExpressionError it ended with, in order.

        ``tenant`` (e.g. the run's team) counts against its share; None: no share applies.
        """
        results: list[Any | ExpressionError] = []
        deadline = time.monotonic() + total_ms / 1000
        while len(results) < len(exprs):
            remaining_ms = round((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                timeout = ExpressionError(f"timeout: template rendering exceeded {total_ms / 1000:g} s")
                results += [timeout] * (len(exprs) - len(results))
                break
            results += self._run_batch(exprs[len(results):], data, min(timeout_ms, remaining_ms),
                                       remaining_ms, max_depth, tenant)
        return results

    def _run_batch(self, exprs: list[str], data: Any, timeout_ms: int, total_ms: int,
                   max_depth: int, tenant: Hashable | None) -> list[Any | ExpressionError]:
        """Evaluate on one child until done or until it is killed (then the results so far)."""
        timeout = ExpressionError(f"timeout: expression exceeded {timeout_ms / 1000:g} s")
        try:
            request = json.dumps({"exprs": exprs, "data": data, "timeout_ms": timeout_ms,
                                  "total_ms": total_ms, "max_depth": max_depth},
                                 separators=(",", ":")).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            return [ExpressionError(f"evaluation error: input is not JSON: {exc}")] * len(exprs)
        except RecursionError:
            return [ExpressionError("evaluation error: input nested too deeply")] * len(exprs)
        slots = self._slots_for(exprs, tenant)
        child = self._acquire(timeout_ms / 1000, slots)
        if child is None:
            return [timeout]  # no child free in time: this expression timed out waiting
        results: list[Any | ExpressionError] = []
        healthy = retire = False
        try:
            child.send(request)
            for expr in exprs:
                try:
                    line = child.await_reply(time.monotonic() + timeout_ms / 1000 + GRACE_SECONDS)
                except _MemoryFull:
                    log.warning("jsonata evaluator %s killed: an expression filled its %d MB", child.pid, self.memory_mb)
                    self._suspect(expr)
                    results.append(ExpressionError(OUT_OF_MEMORY))
                    return results
                if line is None:
                    log.warning("jsonata evaluator %s killed: an expression ran past %d ms", child.pid, timeout_ms)
                    self._suspect(expr)
                    results.append(timeout)
                    return results
                reply = json.loads(line)
                if "ok" not in reply and reply["error"].startswith("timeout: expression"):
                    self._suspect(expr)  # not "timeout: template rendering": that one never ran
                retire = retire or reply.get("retire", False)
                results.append(reply["ok"] if "ok" in reply else ExpressionError(reply["error"]))
            # A demoted child cannot be raised again, and one that ran out of memory is no longer
            # trusted: replace them.
            healthy = not (child.demoted or retire)
            return results
        except _ChildGone:
            log.warning("jsonata evaluator %s died during an evaluation", child.pid)
            results.append(ExpressionError("evaluation error: the evaluator stopped (out of memory?)"))
            return results
        finally:
            self._release(child, healthy, slots)

    # --- sharing out ---------------------------------------------------------------

    def _slots_for(self, exprs: list[str], tenant: Hashable | None) -> list[tuple[Hashable, int]]:
        """The slots a batch must hold besides its child: (key, how many of that key may run at once).

        A tenant holds at most ``share`` children. A batch holding an expression that recently
        ran out of time (a suspect) also needs its tenant's one suspect slot, so a runaway
        template run by many at once occupies one child, not the tenant's whole share.
        """
        slots: list[tuple[Hashable, int]] = []
        if any(self._is_suspect(expr) for expr in exprs):
            slots.append((("suspect", tenant), 1))
        if tenant is not None:
            slots.append((tenant, self.share))
        return slots

    def _suspect(self, expr: str) -> None:
        key = _digest(expr)
        with self._lock:
            self._suspects.pop(key, None)
            self._suspects[key] = time.monotonic() + SUSPECT_SECONDS
            if len(self._suspects) > MAX_SUSPECTS:
                self._suspects.popitem(last=False)  # the oldest

    def _is_suspect(self, expr: str) -> bool:
        if not self._suspects:  # the common case, without the lock
            return False
        key = _digest(expr)
        with self._lock:
            expires = self._suspects.get(key)
            if expires is not None and expires < time.monotonic():
                del self._suspects[key]
                return False
            return expires is not None

    def _take_slots(self, slots: list[tuple[Hashable, int]], deadline: float) -> bool:
        """Hold every slot, waiting (until ``deadline``) while one of them is full; all or none.

        Slots are always taken in the order ``_slots_for`` lists them (suspect lane, then
        tenant, then a child in ``_acquire``), so two batches never wait for each other.
        """
        taken: list[tuple[Hashable, int]] = []
        for key, limit in slots:
            with self._lock:
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = threading.Semaphore(limit)
            if not lane.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._give_slots(taken)
                return False
            taken.append((key, limit))
            with self._lock:
                self._held[key] = self._held.get(key, 0) + 1
        return True

    def _give_slots(self, slots: list[tuple[Hashable, int]]) -> None:
        for key, _ in slots:
            with self._lock:
                if self._held[key] == 1:
                    del self._held[key]
                else:
                    self._held[key] -= 1
                lane = self._lanes[key]
            lane.release()

    def held(self) -> dict[Hashable, int]:
        """Slots held now, by key (a tenant, or ``("suspect", tenant)``)."""
        with self._lock:
            return dict(self._held)

    # --- children ----------------------------------------------------------------

    def _acquire(self, wait_seconds: float, slots: list[tuple[Hashable, int]]) -> _Child | None:
        deadline = time.monotonic() + wait_seconds
        if slots and not self._take_slots(slots, deadline):
            return None
        if not self._free.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._give_slots(slots)
            return None
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is not None and child.process.poll() is None:
            return child
        if child is not None:
            child.kill()  # it died while idle (killed from outside): a new one instead
        try:
            return _Child(self.memory_mb)
        except OSError:
            self._free.release()
            self._give_slots(slots)
            log.exception("could not start a jsonata evaluator")
            return None

    def _release(self, child: _Child, healthy: bool, slots: list[tuple[Hashable, int]]) -> None:
        if healthy and not self._closed:
            with self._lock:
                self._idle.append(child)
        else:
            # Off the caller's path (it gets its answer at once): wait for the killed child
            # to exit and start its replacement, so the next caller finds one ready.
            threading.Thread(target=self._replace, args=(child,), name="jsonata-replace", daemon=True).start()
        self._free.release()
        self._give_slots(slots)

    def _replace(self, child: _Child | None) -> None:
        if child is not None:
            child.kill()
        if self._closed:
            return
        try:
            fresh = _Child(self.memory_mb)
        except OSError:
            log.exception("could not start a jsonata evaluator")
            return
        with self._lock:
            if len(self._idle) < self.size and not self._closed:
                self._idle.append(fresh)
                return
        fresh.kill()  # enough idle already (callers started their own meanwhile)

    def warm_up(self) -> None:
        """Start the evaluators in the background, so the first evaluations need not wait."""
        with self._lock:
            missing = self.size - len(self._idle)
        for _ in range(missing):
            starter = threading.Thread(target=self._replace, args=(None,), name="jsonata-start", daemon=True)
            self._starters.append(starter)
            starter.start()

    def close(self) -> None:
        """Stop every idle child (shutdown); children in use end when their callers release them.

        Waits for evaluators still starting (they stop at once, seeing the pool closed): a
        process that execs next (``chatsvc serve --demo``) must leave no child unreaped.
        """
        self._closed = True
        starters, self._starters = self._starters, []
        for starter in starters:
            if starter is not threading.current_thread():
                starter.join(timeout=10)
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()

    def idle_pids(self) -> list[int]:
        """The idle children's process ids (tests, diagnostics)."""
        with self._lock:
            return [child.pid for child in self._idle]


_pool: EvaluatorPool | None = None
_pool_pid: int | None = None
_pool_settings = {"size": DEFAULT_WORKERS, "memory_mb": DEFAULT_MEMORY_MB}
_pool_guard = threading.Lock()


def configure(*, size: int, memory_mb: int) -> None:
    """Settings for this process's pool (``CHATSVC_JSONATA_WORKERS``, ``CHATSVC_JSONATA_MEMORY_MB``);
    its evaluators start in the background."""
    global _pool
    with _pool_guard:
        if _pool is not None and (_pool.size, _pool.memory_mb) != (size, memory_mb):
            _pool.close()
            _pool = None
        _pool_settings.update(size=size, memory_mb=memory_mb)
    pool().warm_up()


def pool() -> EvaluatorPool:
    """This process's pool, created on first use (after a fork: a new one, the parent's is not ours)."""
    global _pool, _pool_pid
    with _pool_guard:
        if _pool is None or _pool_pid != os.getpid():
            _pool = EvaluatorPool(**_pool_settings)
            _pool_pid = os.getpid()
        return _pool


def shutdown() -> None:
    global _pool
    with _pool_guard:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None


def evaluate_many(exprs: list[str], data: Any, *, timeout_ms: int, total_ms: int | None = None,
                  max_depth: int = 100, tenant: Hashable | None = None) -> list[Any | ExpressionError]:
    """Evaluate expressions against JSON-like data in an evaluator process; see ``EvaluatorPool``."""
    if not exprs:
        return []
    return pool().evaluate_many(exprs, data, timeout_ms=timeout_ms,
                                total_ms=timeout_ms if total_ms is None else total_ms, max_depth=max_depth,
                                tenant=tenant)


def evaluate(expr: str, data: Any, *, timeout_ms: int = 500, max_depth: int = 100,
             tenant: Hashable | None = None) -> Any:
    """One expression's value; raises ExpressionError like ``expressions.evaluate``."""
    [result] = evaluate_many([expr], data, timeout_ms=timeout_ms, max_depth=max_depth, tenant=tenant)
    if isinstance(result, ExpressionError):
        raise result
    return result
