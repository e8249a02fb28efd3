"""The database schema's versions: Alembic migrations, this package's ``versions/`` (docs/decisions.md).

``upgrade()`` brings any database to the newest schema: a new one is created from the
migrations, one created by ``create_all`` before migrations existed is recognised (its
tables are there, its version is not) and marked as the first revision before the
upgrade runs. ``chatsvc init-db`` calls it; so does every other CLI command.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = os.path.dirname(os.path.abspath(__file__))  # alembic's script folder: env.py, versions/
BASELINE = "0001"  # the schema create_all made before migrations existed


def alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision (idempotent)."""
    with engine.begin() as connection:
        config = alembic_config(connection)
        if current_revision(connection) is None and inspect(connection).has_table("users"):
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


def create_current(engine: Engine) -> None:
    """A new database straight from the models, marked as the newest revision (tests: faster than migrating)."""
    from chatsvc.extensions import db

    with engine.begin() as connection:
        db.metadata.create_all(connection)
        command.stamp(alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
