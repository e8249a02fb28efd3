"""An evaluator process: JSONata evaluations for the serving process, one request per line.

Started by ``pool`` as ``python path/to/jsonata/worker.py MEMORY_MB``: a fresh
interpreter (nothing forked from a worker running greenlets) that imports only
``expressions`` beside it — not the chatsvc package, so it starts in a fraction of a
second and stays small — with its address space capped, so that a huge range or string
ends in MemoryError here, never in the server. It writes ``ready`` once it can serve.

Protocol (newline-delimited JSON; ``json.dumps`` never writes a raw newline):
  request  ``{"exprs": [...], "data": ..., "timeout_ms": N, "total_ms": N, "max_depth": N}``
  replies  one line per expression, in order: ``{"ok": value}`` or ``{"error": reason}``;
           ``"retire": true`` beside an error asks the server to replace this process
The serving process may kill this process at any moment (its hard time limit).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

if __package__:  # imported as chatsvc.services.jsonata.worker (tests)
    from chatsvc.services.jsonata.expressions import OUT_OF_MEMORY, ExpressionError, evaluate
else:  # run by path: the module beside this file, without the chatsvc package (Flask, SQLAlchemy...)
    from expressions import OUT_OF_MEMORY, ExpressionError, evaluate  # type: ignore[no-redef]

MAX_RESULT_BYTES = 1024 * 1024  # a placeholder or transform result larger than this is an error
TOO_LARGE_TOGETHER = f"evaluation error: the template's values exceed {MAX_RESULT_BYTES} bytes together"
NICENESS = 10


def _reply(expr: str, data: object, timeout_ms: int, max_depth: int) -> bytes:
    try:
        line = json.dumps({"ok": evaluate(expr, data, timeout_ms=timeout_ms, max_depth=max_depth)},
                          separators=(",", ":"))
    except ExpressionError as exc:
        line = json.dumps({"error": exc.reason})
    except MemoryError:
        line = json.dumps({"error": OUT_OF_MEMORY, "retire": True})
    except SystemError:
        # CPython reports some allocations failing at the address-space cap as an internal
        # error ("error return without exception set"). Either way this interpreter is no
        # longer to be trusted: the server replaces it.
        line = json.dumps({"error": f"{OUT_OF_MEMORY}?", "retire": True})
    except (TypeError, ValueError) as exc:  # a result JSON cannot carry
        line = json.dumps({"error": f"evaluation error: {exc}"})
    encoded = line.encode() + b"\n"
    if len(encoded) > MAX_RESULT_BYTES:
        return _error_line(f"evaluation error: result larger than {MAX_RESULT_BYTES} bytes")
    return encoded


def _error_line(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode() + b"\n"


def serve(stdin, stdout) -> None:
    for raw in stdin:
        try:
            request = json.loads(raw)
        except MemoryError:
            request = None
        if request is None:
            stdout.write(json.dumps({"error": OUT_OF_MEMORY, "retire": True}).encode() + b"\n")
            stdout.flush()
            continue
        deadline = time.monotonic() + request["total_ms"] / 1000
        # All of one request's values together (a template's placeholders) stay within one
        # result's limit: else one team could repeat a 1 MB placeholder into a prompt of
        # gigabytes in the server (an 8 KB template made a 56 MB run before this).
        budget = MAX_RESULT_BYTES
        for expr in request["exprs"]:
            remaining_ms = round((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                line = _error_line(f"timeout: template rendering exceeded {request['total_ms'] / 1000:g} s")
            elif budget < 0:
                line = _error_line(TOO_LARGE_TOGETHER)
            else:
                line = _reply(expr, request["data"], min(request["timeout_ms"], remaining_ms), request["max_depth"])
                if line.startswith(b'{"ok":'):
                    budget -= len(line)
                    if budget < 0:
                        line = _error_line(TOO_LARGE_TOGETHER)
            stdout.write(line)
            stdout.flush()  # one line at a time: the server sees how far we got


def main() -> None:
    memory_bytes = int(sys.argv[1]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Below the server in the CPU scheduler: a runaway expression burning a core must
    # not slow down the streams and requests of the process that serves everyone.
    os.nice(NICENESS)
    try:
        sys.stdout.buffer.write(b"ready\n")
        sys.stdout.buffer.flush()
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):  # the server went away
        pass
    except MemoryError:  # not even the error reply fits: end; the server reports it and replaces us
        sys.exit(3)


if __name__ == "__main__":
    main()
