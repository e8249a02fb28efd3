"""Render prompt templates: each ``{{ expr }}`` is a JSONata expression over ``{"base", "input"}`` (SPEC §7)."""

from __future__ import annotations

import functools
import json
import os
import re
import zoneinfo
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from chatsvc.services.jsonata.expressions import ExpressionError
from chatsvc.services.jsonata.pool import evaluate_many

# Inside a placeholder, the characters that can change where it ends: quotes, braces, comments.
_SIGNIFICANT = re.compile(r"""["'`{}]|/\*""")
_QUOTED = {
    '"': re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL),
    "'": re.compile(r"'[^'\\]*(?:\\.[^'\\]*)*'", re.DOTALL),
    "`": re.compile(r"`[^`]*`"),
}
_MAX_SAFE_INTEGER = 2**53


@dataclass(frozen=True)
class RenderResult:
    text: str
    warnings: list[dict]  # {"placeholder": "{{ expr }}" as written, "reason": str}


def _balanced_end(template: str, pos: int) -> int:
    """Index just past the ``}}`` that closes a placeholder whose body starts at ``pos``, or -1.

    Object-constructor braces nest and string literals and comments are skipped, so
    ``{{ {"a": {"b": 1}} }}`` and ``{{ "}}" }}`` are one placeholder each.
    """
    depth = 0
    while match := _SIGNIFICANT.search(template, pos):
        token, pos = match.group(), match.end()
        if token in _QUOTED:
            quoted = _QUOTED[token].match(template, match.start())
            if quoted is None:
                return -1  # unterminated literal
            pos = quoted.end()
        elif token == "/*":
            close = template.find("*/", pos)
            if close == -1:
                return -1
            pos = close + 2
        elif token == "{":
            depth += 1
        elif depth:
            depth -= 1
        elif template.startswith("}", pos):
            return pos + 1
    return -1


def _placeholder_spans(template: str) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each ``{{ ... }}``, left to right, in time linear in the template."""
    pos = 0
    aware = True
    while (start := template.find("{{", pos)) != -1:
        end = _balanced_end(template, start + 2) if aware else -1
        if end == -1:
            # Malformed (unterminated string, unbalanced braces): the first `}}` closes it, as in
            # Mustache. From here on always do so, so a failed aware scan never repeats.
            aware = False
            close = template.find("}}", start + 2)
            if close == -1:
                return  # an unclosed `{{` is plain text, and so is everything after it
            end = close + 2
        yield start, end
        pos = end


def _json_numbers(value: Any) -> Any:
    """JSONata has one number type: show integral floats from the data (``3.0``) as ``3``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(_json_numbers(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ExpressionError(f"result is not JSON: {exc}") from None


def render_prompt(
    template: str,
    base: dict,
    input_data: Any,
    *,
    timeout_ms: int = 500,
    total_timeout_ms: int = 2000,
    tenant: Hashable | None = None,
) -> RenderResult:
    """Replace each ``{{ expr }}``; a placeholder that cannot be rendered stays as written, with a warning.

    ``timeout_ms`` bounds one placeholder, ``total_timeout_ms`` the whole template, so a template
    repeating a runaway expression cannot hold a worker for long. ``tenant`` (the run's team)
    shares the evaluators out fairly (``pool``).
    """
    spans = list(_placeholder_spans(template))
    # One round trip to an evaluator process for the whole template (jsonata.pool).
    values = evaluate_many([template[start + 2:end - 2].strip() for start, end in spans],
                           {"base": base, "input": input_data},
                           timeout_ms=timeout_ms, total_ms=total_timeout_ms, tenant=tenant)
    parts: list[str] = []
    warnings: list[dict] = []
    pos = 0
    for (start, end), value in zip(spans, values):
        placeholder = template[start:end]
        parts.append(template[pos:start])
        if isinstance(value, ExpressionError):
            parts.append(placeholder)
            warnings.append({"placeholder": placeholder, "reason": value.reason})
        else:
            parts.append(_format_value(value))
        pos = end
    parts.append(template[pos:])
    return RenderResult("".join(parts), warnings)


def _zone_from_path(path: str) -> str | None:
    """``/usr/share/zoneinfo/Europe/Berlin`` (or a symlink to it) -> ``Europe/Berlin``."""
    real = os.path.realpath(path)
    _, found, name = real.partition("/zoneinfo/")
    if not found:
        return None
    for variant in ("posix/", "right/"):  # alternative trees some distributions link to
        name = name.removeprefix(variant)
    return name


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _is_iana_name(name: str | None) -> bool:
    if not name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except Exception:  # not found, malformed key, or no tz database at all
        return False
    return True


def server_timezone() -> str:
    """The server's IANA timezone name, from TZ, /etc/timezone or the /etc/localtime link; else "UTC".

    Every prompt asks, so the answer is kept per value of TZ (the files are read once).
    """
    return _timezone_for(os.environ.get("TZ", ""))


@functools.lru_cache(maxsize=16)
def _timezone_for(tz: str) -> str:
    tz = tz.removeprefix(":")  # glibc accepts a leading colon
    candidates = [
        _zone_from_path(tz) if tz.startswith("/") else tz,  # TZ may name a zone file
        _read_first_line("/etc/timezone"),
        _zone_from_path("/etc/localtime"),
    ]
    return next((name for name in candidates if _is_iana_name(name)), "UTC")


def default_base(now: datetime | None = None) -> dict[str, str]:
    """Base values every prompt gets: ``now`` (ISO 8601, UTC, like JSONata's ``$now()``) and ``timezone``."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:  # naive datetimes are taken to be UTC already
        now = now.replace(tzinfo=timezone.utc)
    stamp = now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"now": stamp, "timezone": server_timezone()}


def merge_base(*layers: dict | None) -> dict:
    """Shallow merge, later layers win: ``merge_base(default_base(), expert.base, body.base)``."""
    merged: dict = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    return merged
