"""The ``chatsvc`` console script (SPEC §11)."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import click

DEMO_PASSWORD = "chatsvc-demo"
DEMO_ADMIN = "admin@example.com"


def _app():
    """Build the app from the environment (lazily: ``--help`` must not need a database)."""
    from chatsvc import create_app
    from chatsvc.config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def with_app(func: Callable) -> Callable:
    """Run the command inside an app context, with the database at the newest schema."""

    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import IntegrityError

        from chatsvc import migrations
        from chatsvc.errors import ApiError
        from chatsvc.extensions import db

        app = _app()
        with app.app_context():
            migrations.upgrade(db.engine)
            try:
                return func(*args, **kwargs)
            except ApiError as exc:  # the API's errors, told as a one-line message, not a traceback
                raise click.ClickException(_describe(exc)) from None
            except IntegrityError:
                db.session.rollback()
                raise click.ClickException("Conflicts with an existing record (a unique value is taken)") from None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _describe(exc) -> str:
    """An ApiError's message plus its field errors, e.g. ``Unknown admin user (email: No user x)``."""
    details = [
        f"{field}: {'; '.join(map(str, problems)) if isinstance(problems, list) else problems}"
        for fields in (exc.errors or {}).values()
        for field, problems in (fields.items() if isinstance(fields, dict) else [])
    ]
    return exc.message + (f" ({', '.join(details)})" if details else "")


@click.group()
def main() -> None:
    """chatsvc: run Experts and Workflows and stream their logs."""


@main.command("init-db")
@with_app
def init_db() -> None:
    """Create or upgrade the database schema to the newest migration (safe to run again)."""
    click.echo("database ready")


@main.command("create-user")
@click.argument("email")
@click.option("--password", required=True, help="At least 8 characters.")
@click.option("--admin", is_flag=True, help="Make the user a platform admin.")
@with_app
def create_user(email: str, password: str, admin: bool) -> None:
    """Create a user."""
    from chatsvc import accounts

    user = accounts.create_user(email, password, is_admin=admin)
    click.echo(json.dumps({"id": user.id, "email": user.email, "is_admin": user.is_admin}))


@main.command("create-team")
@click.argument("name")
@click.option("--admin", "admin_email", help="Email of an existing user who becomes team admin.")
@with_app
def create_team(name: str, admin_email: str | None) -> None:
    """Create a team, optionally with its admin."""
    from chatsvc import accounts

    team = accounts.create_team(name, admin_email=admin_email)
    click.echo(json.dumps({"id": team.id, "name": team.name}))


@main.command("create-service")
@click.argument("team_id", type=int)
@click.argument("name")
@with_app
def create_service(team_id: int, name: str) -> None:
    """Create a service and print its API key (shown only this once)."""
    from chatsvc import accounts

    service, key = accounts.create_service(team_id, name)
    click.echo(json.dumps({"id": service.id, "team_id": team_id, "name": name, "api_key": key}))


@main.command()
@click.argument("email")
@with_app
def token(email: str) -> None:
    """Print a JWT for a user."""
    from chatsvc import accounts

    click.echo(accounts.token_for(email))


@main.command("demo-data")
@with_app
def demo_data() -> None:
    """Seed the demo team, users, service, expert and workflow (idempotent); print them as JSON."""
    from chatsvc import demo

    click.echo(json.dumps(demo.seed(DEMO_ADMIN, DEMO_PASSWORD, demo_key_file()), indent=2))


@main.command(epilog=(
    "Several hosts: give each the same CHATSVC_DATABASE_URL, CHATSVC_JWT_SECRET and "
    "CHATSVC_REGISTRY_URL=redis://host:6379/0, then run `chatsvc serve --host 0.0.0.0` on each; "
    "with Redis every host runs CHATSVC_WORKERS workers (default: CPU count) and serves every run."))
@click.option("--demo", "demo_mode", is_flag=True, help="Development env, SQLite and demo data.")
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8000).")
def serve(demo_mode: bool, host: str | None, port: int | None) -> None:
    """Serve the app with gunicorn and gevent workers."""
    env = dict(os.environ)
    if demo_mode:
        env["CHATSVC_ENV"] = "development"
        env.pop("CHATSVC_DATABASE_URL", None)
        os.environ.update(CHATSVC_ENV="development")
        os.environ.pop("CHATSVC_DATABASE_URL", None)
    if host:
        env["CHATSVC_HOST"] = host
    if port:
        env["CHATSVC_PORT"] = str(port)
    _check_config(env)  # refuse here, with a clear message, rather than in a booting worker
    url = f"http://{env.get('CHATSVC_HOST', '127.0.0.1')}:{env.get('CHATSVC_PORT', '8000')}"
    if demo_mode:
        _print_demo(url)
    # exec a fresh interpreter: gevent must patch before anything imports ssl or
    # threading, and the app must be created in each worker, after the fork.
    package_dir = os.path.dirname(os.path.abspath(__file__))
    config_file = os.path.join(package_dir, "gunicorn_config.py")
    # gunicorn puts the working directory first on sys.path; a folder named
    # `chatsvc` there would shadow this package. --pythonpath goes before it.
    argv = [sys.executable, "-m", "gunicorn", "-c", config_file,
            "--pythonpath", os.path.dirname(package_dir), "chatsvc:create_app()"]
    sys.stdout.flush()
    os.execvpe(sys.executable, argv, env)


def demo_key_file() -> str:
    """Where the demo service's key is kept between runs (see chatsvc.demo)."""
    from flask import current_app

    return os.path.join(current_app.instance_path, "demo-service-key")


def _check_config(env: dict[str, str]) -> None:
    from chatsvc.config import Config, ConfigError

    try:
        Config.from_env(env).validate()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _print_demo(url: str) -> None:
    from chatsvc import demo, migrations
    from chatsvc.extensions import db
    from chatsvc.services.jsonata import pool as jsonata_pool

    app = _app()
    try:
        with app.app_context():
            migrations.upgrade(db.engine)
            seeded = demo.seed(DEMO_ADMIN, DEMO_PASSWORD, demo_key_file())
    finally:
        # This process execs gunicorn next: its threads and evaluator processes must end
        # here, or the evaluators stay as <defunct> children of the gunicorn master.
        app.extensions["chatsvc.shutdown"]()
        jsonata_pool.shutdown()
    click.echo(f"chatsvc demo at {url}/  (sign in as {seeded['admin_email']} / {seeded['admin_password']})")
    click.echo(json.dumps(seeded, indent=2))
    click.echo("Try it:")
    click.echo(f"  curl -s -H 'X-API-Key: {seeded['service_api_key']}' {url}/api/v1/experts/{seeded['expert_id']}")
    click.echo(
        f"  curl -s -X POST -H 'X-API-Key: {seeded['service_api_key']}' -H 'Content-Type: application/json' "
        f"-d '{{\"workflow_id\": {seeded['workflow_id']}, \"starting_inputs\": {json.dumps(demo.DEMO_INPUTS)}}}' "
        f"{url}/api/v1/chat/workflows:run"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
