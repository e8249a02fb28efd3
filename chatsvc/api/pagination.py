"""`?page=&per_page=` for every list, with the total in `X-Total-Count`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select

from chatsvc.config import current_config
from chatsvc.extensions import db


def clamp_page(args: dict[str, Any]) -> tuple[int, int]:
    """The ``[start, stop)`` slice for the requested page.

    ``per_page`` above the configured maximum is clamped rather than refused;
    ``X-Total-Count`` tells the client how many there are in all.
    """
    config = current_config()
    per_page = min(args.get("per_page") or config.default_page_size, config.max_page_size)
    start = ((args.get("page") or 1) - 1) * per_page
    return start, start + per_page


def paginate(stmt: Select, args: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    """Return one page of ``stmt`` and the headers that describe it."""
    start, stop = clamp_page(args)
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = db.session.scalars(stmt.limit(stop - start).offset(start)).all()
    return list(items), {"X-Total-Count": str(total)}
