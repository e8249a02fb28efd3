"""The logger facade (SPEC §10): leveled events, tracebacks kept out, data made JSON-safe.

Runs on both registry backends, through the fixtures of test_registry.py.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from datetime import datetime, timezone

import pytest

from chatsvc.runs.logger import RunLogger, to_jsonable
from tests.helpers.runs import new_run, read, read_until_done


@pytest.fixture
def logger(registry):
    return RunLogger(registry)


def test_logger_levels(registry, logger):
    run = new_run(registry)
    assert logger.log_info(run.run_id, "node_start", node_key="a", index=1) == 1
    assert logger.log_warn(run.run_id, "input_conflict", keys=["x"]) == 2
    events = read(registry, run.run_id, 0, timeout=0).events
    assert [(e.level, e.message, e.data) for e in events] == [
        ("info", "node_start", {"node_key": "a", "index": 1}),
        ("warn", "input_conflict", {"keys": ["x"]}),
    ]


def test_log_error_keeps_traceback_out_of_the_event(registry, logger, caplog):
    run = new_run(registry)
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger="chatsvc.runs"):
        seq = logger.log_error(run.run_id, "node_error", error, node_key="b")

    event = read(registry, run.run_id, 0, timeout=0).events[0]
    assert (event.seq, event.level) == (seq, "error")
    assert event.data == {"node_key": "b",
                          "exception": {"type": "ValueError", "message": "bad input"}}
    assert "Traceback" not in json.dumps(event.to_dict())
    [record] = [r for r in caplog.records if r.name == "chatsvc.runs"]
    assert record.exc_info[1] is error and run.run_id in record.getMessage()


def test_log_error_without_exception(registry, logger):
    run = new_run(registry)
    logger.log_error(run.run_id, "something_failed", reason="x")
    assert read(registry, run.run_id, 0, timeout=0).events[0].data == {"reason": "x"}


def test_logger_finish_appends_run_finished_then_done(registry, logger):
    run = new_run(registry)
    assert logger.finish(run.run_id, "succeeded", result={"ok": True}, duration_ms=12)
    assert not logger.finish(run.run_id, "failed")  # first call wins, nothing more logged
    events, done = read_until_done(registry, run.run_id)
    assert [(e.level, e.message, e.data) for e in events] == [
        ("info", "run_finished", {"status": "succeeded", "duration_ms": 12}),
    ]
    assert (done.status, done.result, done.done_seq) == ("succeeded", {"ok": True}, 2)


def test_logger_finish_failed_is_error_level(registry, logger):
    run = new_run(registry)
    logger.finish(run.run_id, "failed", error={"type": "X", "message": "y"})
    event = read(registry, run.run_id, 0, timeout=0).events[0]
    assert (event.level, event.data) == ("error", {"status": "failed"})
    with pytest.raises(ValueError):
        logger.finish(run.run_id, "done")


def test_logger_coerces_data_to_json(registry, logger):
    run = new_run(registry)
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    logger.log_info(run.run_id, "mixed", when=when, tags={"b", "a"}, pair=(1, 2),
                    exc=KeyError("k"), thing=Thing(), raw=b"\xffok")
    data = read(registry, run.run_id, 0, timeout=0).events[0].data
    assert data == {
        "when": "2025-01-02T03:04:05+00:00",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "exc": {"type": "KeyError", "message": "'k'"},
        "thing": "a thing",
        "raw": "\ufffdok",
    }


def test_to_jsonable_handles_what_json_dumps_rejects():
    cyclic: list = [1]
    cyclic.append(cyclic)
    value = {"nan": math.nan, "inf": [math.inf], 3: "int key", (1, 2): "tuple key",
             None: "none key", "cycle": cyclic, "when": datetime(2025, 1, 1)}
    result = to_jsonable(value)
    assert result == {"nan": None, "inf": [None], "3": "int key", "(1, 2)": "tuple key",
                      "null": "none key", "cycle": [1, "<cycle>"], "when": "2025-01-01T00:00:00"}
    json.dumps(result, allow_nan=False)  # strictly valid JSON


def test_to_jsonable_copies_flat_plain_data_and_coerces_anything_else():
    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    plain = {"node_key": "n1", "count": 2, "ratio": 0.5, "ok": True, "none": None}
    copied = to_jsonable(plain)
    assert copied == plain and copied is not plain
    coerced = to_jsonable({"level": Level.HIGH, "name": Name("x"), "nan": math.nan, "city": "Zürich",
                           "broken": "a\ud800"})
    assert coerced == {"level": 3, "name": "x", "nan": None, "city": "Zürich", "broken": "a\ufffd"}
    assert [type(coerced[key]) for key in ("level", "name")] == [int, str]
    assert to_jsonable({"\udc00": 1}) == {"\ufffd": 1}
