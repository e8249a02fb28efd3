"""Reading ``CHATSVC_*`` values from an environment, shared by ``config.py`` and ``gunicorn_config.py``.

Only the standard library: the gunicorn master loads this file by path (through
``gunicorn_config.py``), without importing the ``chatsvc`` package and the Flask
and SQLAlchemy it pulls in.
"""

from __future__ import annotations

from typing import Mapping

DEFAULT_REGISTRY_URL = "memory://"


class ConfigError(RuntimeError):
    """The configuration cannot run: the app refuses to start."""


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """``env[name]`` as an integer; ``default`` when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """``env[name]`` as a number; ``default`` when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def registry_url(env: Mapping[str, str]) -> str:
    return env.get("CHATSVC_REGISTRY_URL") or DEFAULT_REGISTRY_URL
