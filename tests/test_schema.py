"""Schema migrations: they build exactly the models' schema, and init-db upgrades any database."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from chatsvc import migrations
from chatsvc.cli import main
from chatsvc.extensions import db
from tests.helpers.support import postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}" if request.param == "sqlite" else postgres_url()
    engine = create_engine(url)
    with engine.begin() as connection:  # PostgreSQL's test database is shared: start empty
        db.metadata.drop_all(connection)
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    yield url, engine
    engine.dispose()


def test_the_migrations_build_exactly_the_models_schema(empty_database):
    _, engine = empty_database
    migrations.upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []  # autogenerate would write nothing
        assert migrations.current_revision(connection) == head()


def test_init_db_upgrades_a_database_made_before_migrations(empty_database, monkeypatch, tmp_path):
    url, engine = empty_database
    with engine.begin() as connection:  # what create_all made before migrations: the baseline, unversioned
        command.upgrade(migrations.alembic_config(connection), migrations.BASELINE)
        connection.exec_driver_sql("DROP TABLE alembic_version")
    assert "example_input" not in {c["name"] for c in inspect(engine).get_columns("experts")}

    monkeypatch.setenv("CHATSVC_DATABASE_URL", url)
    monkeypatch.setenv("CHATSVC_ENV", "development")
    monkeypatch.setenv("CHATSVC_INSTANCE_PATH", str(tmp_path / "instance"))
    for _ in range(2):  # and again: nothing left to do
        result = CliRunner().invoke(main, ["init-db"])
        assert result.exit_code == 0, result.output
    assert "example_input" in {c["name"] for c in inspect(engine).get_columns("experts")}
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == head()


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(migrations.MIGRATIONS).get_current_head()
