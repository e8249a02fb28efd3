"""JSONata in evaluator processes: hard time limit, bounded memory, crash recovery, batching."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import pytest

from chatsvc.services.jsonata import pool as jsonata_pool
from chatsvc.services.jsonata import worker as jsonata_worker
from chatsvc.services.jsonata.expressions import ExpressionError
from chatsvc.services.jsonata.pool import EvaluatorPool
from chatsvc.services.prompt_render import render_prompt

CATASTROPHIC = "$contains(input.s, /(a+)+$/)"
EVIL_INPUT = {"s": "a" * 29 + "!"}


@pytest.fixture
def pool():
    # The default memory cap: at 256 MB `$sum([1..10000000])` fills it within 0.3 s and is then
    # reported as out of memory, not as the time-limit kill its test is about.
    pool = EvaluatorPool(size=2)
    yield pool
    pool.close()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_values_and_errors_come_back_in_order(pool):
    results = pool.evaluate_many(["input.a + 1", "nope(", "input.b", "$string(input.a)"],
                                 {"input": {"a": 41, "b": None}}, timeout_ms=500, total_ms=2000)
    assert results[0] == 42 and results[2] is None and results[3] == "41"
    assert isinstance(results[1], ExpressionError) and results[1].reason.startswith("syntax error")


@pytest.mark.parametrize("expr", [CATASTROPHIC, "$sum([1..10000000])"], ids=["regex backtracking", "huge range"])
def test_a_runaway_built_in_is_killed_at_the_time_limit_and_replaced(pool, expr):
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)  # one evaluator up and idle
    [before] = pool.idle_pids()
    started = time.monotonic()
    [result] = pool.evaluate_many([expr], {"input": EVIL_INPUT}, timeout_ms=300, total_ms=300)
    elapsed = time.monotonic() - started
    assert isinstance(result, ExpressionError)
    assert result.reason == "timeout: expression exceeded 0.3 s"
    assert elapsed < 0.3 + jsonata_pool.GRACE_SECONDS + 0.3
    wait_for(lambda: not _alive(before))  # the runaway process is gone
    assert pool.evaluate_many(["1 + 1"], {}, timeout_ms=500, total_ms=500) == [2]  # a fresh one answers


def test_the_rest_of_a_template_is_still_rendered_after_a_kill(pool, monkeypatch):
    monkeypatch.setattr(jsonata_pool, "_pool", pool)
    monkeypatch.setattr(jsonata_pool, "_pool_pid", os.getpid())
    result = render_prompt("{{ input.s }} {{ " + CATASTROPHIC + " }} {{ 6 * 7 }}", {}, EVIL_INPUT,
                           timeout_ms=300, total_timeout_ms=2000)
    assert result.text == "a" * 29 + "! {{ " + CATASTROPHIC + " }} 42"
    assert [w["reason"] for w in result.warnings] == ["timeout: expression exceeded 0.3 s"]


def test_a_template_is_one_round_trip(pool, monkeypatch):
    monkeypatch.setattr(jsonata_pool, "_pool", pool)
    monkeypatch.setattr(jsonata_pool, "_pool_pid", os.getpid())
    sent: list[bytes] = []
    original = jsonata_pool._Child.send
    monkeypatch.setattr(jsonata_pool._Child, "send", lambda self, request: (sent.append(request),
                                                                            original(self, request))[1])
    result = render_prompt(" ".join("{{ %d }}" % i for i in range(9)), {}, {})
    assert result.text == "0 1 2 3 4 5 6 7 8" and len(sent) == 1


def test_memory_of_an_evaluation_is_bounded():
    small = EvaluatorPool(size=1, memory_mb=128)
    try:
        # Nine million numbers: the evaluator runs out of its address space, the server does not
        # grow. Where an allocation fails decides how the evaluator ends (MemoryError, CPython's
        # "error return without exception set", death, or, most often, a spin at the cap, which
        # is stopped at the next check): each is reported as memory. ~0.1 s here; the time limit
        # only has to outlast a busy machine (an evaluator that computes runs at nice 19).
        started = time.monotonic()
        [result] = small.evaluate_many(["[1..9000000]"], {}, timeout_ms=30_000, total_ms=30_000)
        assert isinstance(result, ExpressionError) and "out of memory" in result.reason
        assert time.monotonic() - started < 25  # not held to the time limit
        assert small.evaluate_many(["1"], {}, timeout_ms=2000, total_ms=2000) == [1]
    finally:
        small.close()


def test_an_evaluator_that_ran_out_of_memory_is_replaced():
    small = EvaluatorPool(size=1, memory_mb=128)
    # Generous limits where a fresh evaluator starts: what is tested is the replacement, and
    # an interpreter's start-up can take seconds while the other tests load the machine.
    try:
        small.evaluate_many(["1"], {}, timeout_ms=10_000, total_ms=10_000)
        [before] = small.idle_pids()
        [result] = small.evaluate_many(['$pad("", 200000000, "x")'], {}, timeout_ms=5000, total_ms=5000)
        assert isinstance(result, ExpressionError) and result.reason == "evaluation error: out of memory", result
        wait_for(lambda: not _alive(before))  # not trusted again: a fresh interpreter instead
        assert small.evaluate_many(["6 * 7"], {}, timeout_ms=10_000, total_ms=10_000) == [42]
    finally:
        small.close()


def test_an_evaluation_stuck_at_its_memory_cap_is_stopped_at_once_as_out_of_memory(pool, monkeypatch):
    monkeypatch.setattr(jsonata_pool, "MEMORY_FULL_SHARE", 0.0)  # any address space counts as full
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
    [before] = pool.idle_pids()
    started = time.monotonic()
    [result] = pool.evaluate_many([CATASTROPHIC], {"input": EVIL_INPUT}, timeout_ms=5000, total_ms=5000)
    assert isinstance(result, ExpressionError) and result.reason == "evaluation error: out of memory"
    assert time.monotonic() - started < 2  # at a check, not at the 5 s limit
    wait_for(lambda: not _alive(before))


def test_an_interpreter_fault_is_answered_and_retires_the_evaluator(monkeypatch):
    def fault(*args, **kwargs):
        raise SystemError("error return without exception set")

    monkeypatch.setattr(jsonata_worker, "evaluate", fault)
    stdout = io.BytesIO()
    jsonata_worker.serve(io.BytesIO(json.dumps({"exprs": ["1"], "data": {}, "timeout_ms": 500, "total_ms": 500,
                                                "max_depth": 100}).encode() + b"\n"), stdout)
    reply = json.loads(stdout.getvalue())
    assert reply["retire"] is True and reply["error"].startswith("evaluation error: out of memory")


def test_a_huge_result_is_an_error_not_a_copy_into_the_server(pool):
    [result] = pool.evaluate_many(['$pad("", 2000000, "x")'], {}, timeout_ms=2000, total_ms=2000)
    assert isinstance(result, ExpressionError) and "larger than" in result.reason


def test_a_templates_values_together_stay_within_one_results_limit(pool):
    # One 1 MB placeholder repeated would otherwise make a prompt of gigabytes in the server.
    big = '$pad("", 400000, "x")'
    results = pool.evaluate_many([big, big, big, "1 + 1"], {}, timeout_ms=2000, total_ms=5000)
    assert results[:2] == ["x" * 400000] * 2
    assert all(isinstance(result, ExpressionError) and "exceed 1048576 bytes together" in result.reason
               for result in results[2:])


def test_an_evaluator_killed_mid_evaluation_gives_an_error_and_the_pool_recovers(pool):
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
    [pid] = pool.idle_pids()
    threading.Timer(0.3, os.kill, args=(pid, signal.SIGKILL)).start()
    [result] = pool.evaluate_many([CATASTROPHIC], {"input": EVIL_INPUT}, timeout_ms=5000, total_ms=5000)
    assert isinstance(result, ExpressionError) and "stopped" in result.reason
    assert pool.evaluate_many(["2 * 21"], {}, timeout_ms=2000, total_ms=2000) == [42]


def test_an_idle_evaluator_that_died_is_replaced(pool):
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
    [pid] = pool.idle_pids()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid))
    assert pool.evaluate_many(["1 + 2"], {}, timeout_ms=2000, total_ms=2000) == [3]


def test_callers_beyond_the_pool_wait_at_most_their_time_limit(pool):
    """Two runaways hold both evaluators; a third caller gets a timeout, not an endless wait."""
    threads = [threading.Thread(target=pool.evaluate_many, args=([CATASTROPHIC], {"input": EVIL_INPUT}),
                                kwargs={"timeout_ms": 1500, "total_ms": 1500}) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    [result] = pool.evaluate_many(["1"], {}, timeout_ms=200, total_ms=200)
    assert isinstance(result, ExpressionError) and result.reason.startswith("timeout")
    assert time.monotonic() - started < 1.0
    for thread in threads:
        thread.join(10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_evaluation_that_keeps_a_cpu_busy_drops_to_the_lowest_priority(pool):
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
    [child] = pool.idle_pids()
    niceness = []
    runaway = threading.Thread(target=pool.evaluate_many, args=([CATASTROPHIC], {"input": EVIL_INPUT}),
                               kwargs={"timeout_ms": 1500, "total_ms": 1500})
    runaway.start()
    try:
        wait_for(lambda: niceness.append(os.getpriority(os.PRIO_PROCESS, child)) or niceness[-1] == 19, timeout=1.0)
    finally:
        runaway.join()
    assert not _alive(child) or child not in pool.idle_pids()  # a demoted evaluator is not reused


def test_an_evaluation_slowed_by_a_busy_machine_keeps_its_priority_and_its_evaluator(pool):
    """Waiting for a CPU is not computing: no demotion, no replacement."""
    pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
    [child] = pool.idle_pids()
    priority = os.getpriority(os.PRIO_PROCESS, child)
    os.kill(child, signal.SIGSTOP)  # the machine gives it no CPU for a while
    threading.Timer(0.3, os.kill, args=(child, signal.SIGCONT)).start()
    assert pool.evaluate_many(["6 * 7"], {}, timeout_ms=1000, total_ms=1000) == [42]
    assert os.getpriority(os.PRIO_PROCESS, child) == priority < 19
    assert pool.idle_pids() == [child]


def test_a_tenant_flooding_the_pool_with_runaways_leaves_the_others_a_share():
    """One team keeps more runaways in flight than there are evaluators; another team's
    expression still gets an evaluator at once, and the flooding team waits for its own."""
    pool = EvaluatorPool(size=4, memory_mb=256)
    try:
        pool.evaluate_many(["1"], {}, timeout_ms=500, total_ms=500)
        assert pool.share == 2
        flood = [threading.Thread(target=pool.evaluate_many, args=([CATASTROPHIC], {"input": EVIL_INPUT}),
                                  kwargs={"timeout_ms": 1500, "total_ms": 1500, "tenant": "team:1"})
                 for _ in range(6)]
        for thread in flood:
            thread.start()
        wait_for(lambda: pool.held().get("team:1") == 2)
        # Behind the flood it would time out (ExpressionError), not answer.
        assert pool.evaluate_many(["6 * 7"], {}, timeout_ms=500, total_ms=500, tenant="team:2") == [42]
        [waiting_too_long] = pool.evaluate_many(["1"], {}, timeout_ms=200, total_ms=200, tenant="team:1")
        assert isinstance(waiting_too_long, ExpressionError)  # its own share is taken: it waits, then times out
        assert waiting_too_long.reason == "timeout: expression exceeded 0.2 s"
        for thread in flood:
            thread.join()
        assert pool.held() == {}
    finally:
        pool.close()


def test_a_known_runaway_run_many_times_takes_one_evaluator_and_its_team_goes_on():
    """Once an expression ran out of time it is a suspect: a team runs one batch holding it at
    a time, so the team's other templates are not stuck behind copies of its runaway."""
    pool = EvaluatorPool(size=4, memory_mb=256)
    try:
        [first] = pool.evaluate_many([CATASTROPHIC], {"input": EVIL_INPUT}, timeout_ms=200, total_ms=200,
                                     tenant="team:1")
        assert first.reason.startswith("timeout")  # now a suspect
        again = [threading.Thread(target=pool.evaluate_many, args=([CATASTROPHIC], {"input": EVIL_INPUT}),
                                  kwargs={"timeout_ms": 1500, "total_ms": 1500, "tenant": "team:1"})
                 for _ in range(4)]
        for thread in again:
            thread.start()
        wait_for(lambda: pool.held().get(("suspect", "team:1")) == 1)
        assert pool.held().get("team:1") == 1  # the other copies wait for the suspect slot, holding nothing
        assert pool.evaluate_many(["6 * 7"], {}, timeout_ms=500, total_ms=500, tenant="team:1") == [42]
        for thread in again:
            thread.join()
    finally:
        pool.close()
