"""Creating users, teams and services: shared by the API and the CLI."""

from __future__ import annotations

from sqlalchemy import func, select

from chatsvc.errors import Conflict, NotFound, Unprocessable
from chatsvc.extensions import db
from chatsvc.models import MIN_PASSWORD_LENGTH, Membership, Service, Team, User
from chatsvc.security.caller import issue_token



def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == User.normalize_email(email)))


def create_user(email: str, password: str, *, is_admin: bool = False) -> User:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Unprocessable(
            "Password too short",
            errors={"json": {"password": [f"Shorter than minimum length {MIN_PASSWORD_LENGTH}."]}},
        )
    if find_user(email) is not None:  # a clear message; the unique index still guards races
        raise Conflict(f"A user with email {User.normalize_email(email)} already exists")
    user = User(email=User.normalize_email(email), is_admin=is_admin)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def keep_a_platform_admin(user: User) -> None:
    """Refuse (409) to demote or delete the last platform admin: no one could manage users."""
    if not user.is_admin:
        return
    admins = db.session.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True)))
    if admins <= 1:
        raise Conflict("This is the last platform admin; make another user a platform admin first")


def create_team(name: str, *, admin_email: str | None = None, admin_user_id: int | None = None) -> Team:
    if db.session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise Conflict(f"A team named {name!r} already exists")
    team = Team(name=name)
    admin = None
    if admin_email is not None:
        admin = find_user(admin_email)
        missing = ("email", admin_email)
    elif admin_user_id is not None:
        admin = db.session.get(User, admin_user_id)
        missing = ("admin_user_id", admin_user_id)
    if (admin_email is not None or admin_user_id is not None) and admin is None:
        raise Unprocessable("Unknown admin user", errors={"json": {missing[0]: [f"No user {missing[1]}"]}})
    if admin is not None:
        team.memberships.append(Membership(user=admin, role="admin"))
    db.session.add(team)
    db.session.commit()
    return team


def create_service(team_id: int, name: str) -> tuple[Service, str]:
    """Create a service; return it with its API key (the only time the key exists in clear)."""
    if db.session.get(Team, team_id) is None:
        raise NotFound(f"Team {team_id} not found")
    service = Service(team_id=team_id, name=name)
    key = service.issue_key()
    db.session.add(service)
    db.session.commit()
    return service, key


def token_for(email: str) -> str:
    user = find_user(email)
    if user is None:
        raise NotFound(f"No user {email}")
    return issue_token(user)
