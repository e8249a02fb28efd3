"""tests/api: every test runs twice, on SQLite and on PostgreSQL.

pytest imports both this file and tests/conftest.py under the module name
``conftest`` (neither directory is a package), so after this one is loaded a
plain ``import conftest`` elsewhere would find this module. The root conftest
is therefore reached through pytest's plugin manager, and any name this module
lacks is looked up there: ``from conftest import need`` keeps working in every
test module, whichever of the two pytest imported last.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
_root: ModuleType | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _root
    _root = config.pluginmanager.get_plugin(str(ROOT_CONFTEST))


def __getattr__(name: str):
    if _root is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(_root, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chatsvc.db'}"
    return _root.postgres_url()  # skips (or fails under CHATSVC_TEST_STRICT=1) if unset


@pytest.fixture(scope="session")
def _password_hashes() -> dict[str, str]:
    return {}


@pytest.fixture
def make_user(ctx, _password_hashes):
    """The root ``make_user``, hashing each distinct password once per session.

    A real scrypt hash costs ~70 ms and every ``world`` makes four users; reusing
    the hash of the same password keeps hundreds of API tests fast while login
    still checks a real hash.
    """
    from werkzeug.security import generate_password_hash

    from chatsvc.extensions import db
    from chatsvc.models import User

    counter = iter(range(1, 1_000_000))

    def factory(email: str | None = None, *, is_admin: bool = False, password: str | None = None) -> User:
        password = _root.PASSWORD if password is None else password
        if password not in _password_hashes:
            _password_hashes[password] = generate_password_hash(password)
        user = User(email=email or f"user{next(counter)}@example.com", is_admin=is_admin)
        user.password_hash = _password_hashes[password]
        db.session.add(user)
        db.session.commit()
        return user

    return factory
