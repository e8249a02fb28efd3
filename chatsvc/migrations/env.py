"""Alembic environment: chatsvc's models are the target; the caller hands over the connection."""

from alembic import context

from chatsvc.extensions import db

config = context.config
connection = config.attributes["connection"]  # set by chatsvc.migrations.alembic_config; no alembic.ini, no URL here
context.configure(
    connection=connection,
    target_metadata=db.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
