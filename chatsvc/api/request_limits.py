"""Limits on what a request may carry, checked once for every route (SPEC §10, §11).

- Path ids: the ``int`` converter accepts only ids a row could have, so
  ``/teams/1/members/9223372036854775808`` is a 404 from routing, on every route.
- JSON bodies: an API request whose body is not ``application/json`` is a 415
  (rather than a body silently ignored); one nested deeper than
  ``CHATSVC_MAX_JSON_DEPTH`` is a 422 before any view or schema sees it (Python's
  parser would recurse until RecursionError otherwise). ``NaN`` and ``Infinity``, which
  Python's parser accepts, are a 400 (not JSON); a number no float or int can hold
  (``1e400``, 5,000 digits) is a 422. Text holding a lone UTF-16 surrogate
  (``"\\ud800"``: valid JSON syntax, not valid Unicode) is a 422 too: it could not be
  sent on as UTF-8 (events, the LLM), so it is refused where it comes in. So is text
  holding NUL (``"\u0000"``): PostgreSQL's text and JSON columns reject it, so it is a
  422 naming the field, on every database alike, before any view or schema runs. On the
  sign-in route, whose body is credentials, it is the usual 401 instead.
- Chunked bodies: without a Content-Length the body is read here up to
  ``CHATSVC_MAX_BODY_BYTES``; one byte more is a 413, never a body cut short.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from typing import Any, Callable, Iterable

from flask import Flask, current_app, request
from werkzeug.routing import IntegerConverter

from chatsvc.errors import ApiError, BadRequest, UnsupportedMediaType, Unprocessable, error_response
from chatsvc.models import MAX_ID
from chatsvc.runs.sse import find_lone_surrogate


API_PREFIX = "/api/v1/"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NUL_ESCAPE = re.compile(rb"\\u0000")  # raw control characters are not valid JSON: only the escape
NUL_MESSAGE = "must not contain the NUL character (U+0000)"

#: Views that answer text no database can store with their own error (the sign-in: 401).
_NUL_REFUSALS: dict[type, Callable[[], ApiError]] = {}


def refuses_nul_with(error: Callable[[], ApiError]) -> Callable[[type], type]:
    """Class decorator of a view: a body holding NUL raises ``error()`` instead of the 422
    (on the sign-in, whose body is credentials, a NUL just means wrong credentials)."""

    def mark(view_class: type) -> type:
        _NUL_REFUSALS[view_class] = error
        return view_class

    return mark


def find_nul(value: Any) -> list[str | int] | None:
    """The path (keys and list indexes) to the first key or string holding NUL, or None."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return [*path, key]
                stack.append((child, [*path, key]))
        elif isinstance(item, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(item))
    return None


def _field_errors(path: list[str | int], message: str) -> dict[str, Any]:
    """``{"json": {"base": {"key": [message]}}}``: the nesting marshmallow gives field errors."""
    errors: Any = [message]
    for step in reversed(path):
        errors = {step: errors}
    return {"json": errors if path else {"_schema": [message]}}


class IdConverter(IntegerConverter):
    """``<int:…>`` for database ids: 1 … MAX_ID, anything else does not match (404)."""

    def __init__(self, map, *args: Any, **kwargs: Any) -> None:  # noqa: A002 (werkzeug's name)
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if containers nest deeper than ``limit`` (iterative: no recursion of our own)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class _NotJson(ValueError):
    """Text Python's parser accepts that JSON does not (NaN, Infinity)."""


def _not_json(constant: str) -> float:
    raise _NotJson(f"{constant} is not JSON (send null or a string)")


class _OutOfRange(ValueError):
    """A JSON number no 64-bit float holds."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON, but no float holds it
        raise _OutOfRange(f"{text[:40]} does not fit a 64-bit float")
    return value


def parse_json_body(data: bytes) -> Any:
    """A request body as JSON, strictly: Python's parser also accepts NaN and Infinity and
    turns 1e400 into infinity, none of which a JSON response could carry back.

    Raises JSONDecodeError (malformed), UnicodeDecodeError (not UTF-8), _NotJson (NaN,
    Infinity), _OutOfRange (a float beyond 64 bits) or ValueError (an integer longer than
    Python converts: 4,300 digits).
    """
    return json.loads(data, parse_constant=_not_json, parse_float=_finite)


def _has_body() -> bool:
    return bool(request.content_length)  # chunked bodies have one by now (ChunkedBodyLimit)


def _check_json_body(limit: int) -> Callable[[], None]:
    def check() -> None:
        if not request.is_json:
            if _has_body() and request.path.startswith(API_PREFIX):
                # curl -d sends application/x-www-form-urlencoded: say so rather than
                # ignoring the body and reporting missing fields.
                raise UnsupportedMediaType(
                    f"Send the request body as JSON with 'Content-Type: application/json'"
                    f" (got {request.mimetype or 'no Content-Type'})")
            return
        try:
            body = parse_json_body(request.get_data(cache=True))
        except RecursionError:
            body = None
            too_deep = True
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # malformed, or not UTF-8: the view's parser answers 400 as for any malformed body
        except _NotJson as exc:
            raise BadRequest(f"Malformed request body: {exc}", errors={"json": [str(exc)]}) from None
        except ValueError as exc:  # a float beyond 64 bits, or an integer too long to convert
            reason = str(exc) if isinstance(exc, _OutOfRange) else \
                f"an integer longer than {sys.get_int_max_str_digits()} digits"
            raise Unprocessable(f"JSON body: number out of range ({reason})") from None
        else:
            too_deep = body is not None and json_depth_exceeds(body, limit)
        if too_deep:
            raise Unprocessable(f"JSON body nested deeper than {limit} levels")
        # Only a "\uD8.." to "\uDF.." escape can produce a surrogate; UTF-8 bytes cannot.
        if body is not None and _SURROGATE_ESCAPE.search(request.get_data(cache=True)):
            lone = find_lone_surrogate(body)
            if lone is not None:
                raise Unprocessable(f"JSON body: text must be valid Unicode (found a lone surrogate "
                                    f"\\u{ord(lone):04x})")
        if body is not None and _NUL_ESCAPE.search(request.get_data(cache=True)):
            path = find_nul(body)
            if path is not None:
                _refuse_nul(path)

    return check


def _refuse_nul(path: list[str | int]) -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    own_error = _NUL_REFUSALS.get(getattr(view, "view_class", None))  # type: ignore[arg-type]
    if own_error is not None:
        raise own_error()
    where = ".".join(str(step).replace("\x00", "\\u0000") for step in path) or "the body"
    raise Unprocessable(f"JSON body: {where} {NUL_MESSAGE}", errors=_field_errors(path, NUL_MESSAGE))


class ChunkedBodyLimit:
    """WSGI middleware: read a chunked request body up to the limit, 413 beyond it."""

    def __init__(self, app: Callable, app_for_errors: Flask, max_bytes: int) -> None:
        self.app = app
        self.flask_app = app_for_errors
        self.max_bytes = max_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("CONTENT_LENGTH") or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            with self.flask_app.app_context():
                return error_response(413, "Request body too large")(environ, start_response)
        # From here on the app sees an ordinary body of known length.
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ.pop("wsgi.input_terminated", None)
        return self.app(environ, start_response)


def init_app(app: Flask, *, max_json_depth: int, max_body_bytes: int) -> None:
    """Install the id converter (before any blueprint), the depth check and the body limit."""
    app.url_map.converters["int"] = IdConverter
    app.before_request(_check_json_body(max_json_depth))
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app, app, max_body_bytes)  # type: ignore[method-assign]
