"""How a caller authenticates, as the OpenAPI document declares it (SPEC §3), for Swagger UI's Authorize."""

from __future__ import annotations

from flask_smorest import Api

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "A person: the `access_token` from `POST /api/v1/auth/login`"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "A service: its API key"},
    "streamToken": {"type": "apiKey", "in": "query", "name": "token",
                    "description": "The signed token in a run's `events_url` (for EventSource, which cannot send headers)"},
}

#: Every operation accepts either credential unless it says otherwise (login and the probes: none).
DEFAULT_SECURITY = [{"bearerAuth": []}, {"apiKeyAuth": []}]


def declare(api: Api) -> None:
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
