"""The one place chatsvc evaluates JSONata: cached compilation, thread-safe, time- and depth-bounded.

What jsonata-python 0.7.1 does, read from its source, and why this module looks the way it does:

- A compiled ``Jsonata`` object is not safe to evaluate from several threads. ``evaluate(data)``
  binds ``$`` on the object's own frame (concurrent calls see each other's input; reproduced),
  and ``eval()`` runs on a "per-thread instance" (``Jsonata.CURRENT``, one per thread, not per
  expression) whose ``input``/``environment``/``timestamp`` it mutates; ``$now()``/``$millis()``
  read that instance's timestamp, which is stale unless it is the object being evaluated.
  So we cache the compiled object (its AST is only read during evaluation) and evaluate a
  cheap shallow copy per call, with a per-call frame, made the thread's current instance.
- Its ``Timebox`` is cooperative: callbacks at every evaluation step compare the wall clock and
  a depth counter. No threads, no signals, so it works in worker threads and under gevent.
  We do not use it: when set up at construction its clock starts then and its counter is
  shared by every evaluation of the object, and it skips "parallel" frames in a way that leaks
  depth (``$map([1..200], function($x){[$x, $x]})`` fails with "stack overflow").
  We register our own per-call callbacks under the same names instead.
  Limit of any cooperative check: one built-in call runs to completion (``$sum([1..10000000])``
  takes seconds; a catastrophic regex can take longer); the check fires when it returns.
- Undefined is Python ``None``; JSON null is ``Utils.NULL_VALUE`` once output null conversion
  is off, so we can tell them apart and still return plain ``None`` for null.
- Numbers: integral results come back as ``int`` (``3.0`` -> ``3``); input values are returned
  as they are (a ``3.0`` in the data stays a float).
- Importing the library sets ``sys.setrecursionlimit(10000)``; deep evaluation is bounded here
  by ``max_depth`` long before that matters.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

from jsonata import JException, Jsonata
from jsonata.tokenizer import Tokenizer
from jsonata.utils import Utils

_DEPTH_EXCEEDED = "recursion depth exceeded"
OUT_OF_MEMORY = "evaluation error: out of memory"  # the evaluator process's address space is full

# Tokens after which `[` opens a predicate on a step (`input.items[*]`, `$list[*]`, `f(x)[*]`)
# rather than an array constructor (`$count([*])`, `a * [*]`).
_STEP_END_TYPES = frozenset({"name", "variable", "string"})
_OPERAND_TYPES = _STEP_END_TYPES | {"number", "value", "regex"}
_CLOSERS = frozenset({")", "]", "}"})


class ExpressionError(Exception):
    """A JSONata expression failed to compile or evaluate; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_operator(token: Tokenizer.Token, value: str) -> bool:
    return token.type == "operator" and token.value == value


def _ends_step(token: Tokenizer.Token) -> bool:
    return token.type in _STEP_END_TYPES or (token.type == "operator" and token.value in _CLOSERS)


def rewrite_jsonpath_wildcards(expr: str) -> str:
    """Turn JSONPath-style ``step[*]`` into JSONata's ``step[]``: every item, kept as an array.

    Uses the library's own tokenizer, so string literals, regexes, comments, ``*`` as
    multiplication and ``.*`` wildcards are left alone.
    """
    if "*" not in expr:
        return expr
    lexer = Tokenizer(expr)
    tokens: list[Tokenizer.Token] = []
    try:
        infix = False  # the tokenizer must know whether `/` is division or starts a regex
        while (token := lexer.next(infix)) is not None:
            tokens.append(token)
            infix = token.type in _OPERAND_TYPES or (token.type == "operator" and token.value in _CLOSERS)
    except Exception:  # broken text: let the real parser report it against the original
        return expr
    parts: list[str] = []
    pos = 0
    for i in range(1, len(tokens) - 2):
        if (_is_operator(tokens[i], "[") and _is_operator(tokens[i + 1], "*")
                and _is_operator(tokens[i + 2], "]") and _ends_step(tokens[i - 1])):
            start, end = tokens[i].position - 1, tokens[i + 2].position  # token positions are end offsets
            parts += [expr[pos:start], "[]"]
            pos = end
    return "".join(parts) + expr[pos:] if parts else expr


def _current_instance() -> Jsonata | None:
    return getattr(Jsonata.CURRENT, "jsonata", None)


def _set_current_instance(instance: Jsonata | None) -> None:
    if instance is None:
        try:
            del Jsonata.CURRENT.jsonata
        except AttributeError:
            pass
    else:
        Jsonata.CURRENT.jsonata = instance


@functools.lru_cache(maxsize=1024)
def compile_expression(expr: str) -> Jsonata:
    """Compile (and cache) an expression; never evaluate the returned object directly, use ``evaluate``."""
    previous = _current_instance()
    try:
        compiled = Jsonata(rewrite_jsonpath_wildcards(expr))
    except RecursionError:
        raise ExpressionError("syntax error: expression nested too deeply") from None
    except Exception as exc:
        message = str(exc).removeprefix("Syntax error: ")
        raise ExpressionError(f"syntax error: {message}") from exc
    finally:
        # The constructor makes the new object this thread's "current instance"; the shared
        # cached object must never be one, or this thread's evaluations would mutate it.
        _set_current_instance(previous)
    if compiled.errors:
        raise ExpressionError(f"syntax error: {compiled.errors[0]}")
    compiled.set_output_convert_nulls(False)  # keep JSON null (NULL_VALUE) apart from undefined (None)
    # Our data is parsed JSON; validating it would walk the whole input once per placeholder.
    compiled.set_validate_input(False)
    return compiled


class _Bounds:
    """Per-call time and depth checks, called by the evaluator on entry to and exit from every step."""

    def __init__(self, timeout_ms: int, max_depth: int) -> None:
        self.timeout_ms = timeout_ms
        self.max_depth = max_depth
        self.deadline = time.monotonic() + timeout_ms / 1000
        self.depth = 0
        self.tripped: str | None = None  # kept because `$eval` re-wraps errors raised inside it

    def on_entry(self, expr: Any, input: Any, env: Any) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            self.tripped = _DEPTH_EXCEEDED
            raise JException("D1011", -1)
        self._check_time()

    def on_exit(self, expr: Any, input: Any, env: Any, result: Any) -> None:
        self.depth -= 1
        self._check_time()

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            self.tripped = f"timeout: expression exceeded {self.timeout_ms / 1000:g} s"
            # A JException, like the library's own timebox: `and`/`or` turn other errors into "Unexpected".
            raise JException("D1012", -1, self.timeout_ms)

    def bindings(self) -> dict[str, Any]:
        """The frame bindings under which the evaluator looks up its step callbacks."""
        return {"__evaluate_entry": self.on_entry, "__evaluate_exit": self.on_exit}


def evaluate(expr: str, data: Any, *, timeout_ms: int = 500, max_depth: int = 100) -> Any:
    """Evaluate ``expr`` against JSON-like ``data``; raises ExpressionError (undefined included).

    MemoryError and SystemError are the interpreter running out, not the expression failing:
    they pass through to the evaluator process, which answers and asks to be replaced.
    """
    compiled = compile_expression(expr)
    # Per call: a shallow copy (shares the read-only AST) carrying this call's input, frame and
    # timestamp, with this thread's own parser (partial application re-parses at run time).
    instance = copy.copy(compiled)
    instance.parser = Jsonata.get_parser()
    bounds = _Bounds(timeout_ms, max_depth)
    previous = _current_instance()
    _set_current_instance(instance)
    try:
        # Passing bindings gives the call a fresh frame, so `$` is not bound on the shared object.
        result = instance.evaluate(data, bounds.bindings())
    except RecursionError:
        raise ExpressionError(_DEPTH_EXCEEDED) from None
    except (MemoryError, SystemError):
        raise
    except Exception as exc:  # JException, and plain Python errors the library lets through
        raise ExpressionError(bounds.tripped or f"evaluation error: {exc}") from exc
    finally:
        _set_current_instance(previous)
    if result is None:
        raise ExpressionError("undefined")
    if instance.is_function_like(result):
        raise ExpressionError("evaluation error: result is a function, not data")
    try:
        return Utils.convert_nulls(result)  # NULL_VALUE -> None, in nested values too
    except RecursionError:
        raise ExpressionError(_DEPTH_EXCEEDED) from None
