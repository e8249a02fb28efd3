"""Platform users (platform admins only)."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from chatsvc import accounts
from chatsvc.extensions import db
from chatsvc.models import User
from chatsvc.security.caller import authenticate, get_caller
from chatsvc.security.permissions import get_or_404, require_platform_admin

from .pagination import paginate
from .schemas import ErrorSchema, PaginationArgs, UserSchema, UserUpdateSchema

blp = Blueprint("users", __name__, url_prefix="/api/v1/users", description="Users")
blp.before_request(authenticate)


@blp.route("")
class Users(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, UserSchema(many=True))
    def get(self, args):
        """List users."""
        require_platform_admin(get_caller())
        return paginate(select(User).order_by(User.id), args)

    @blp.arguments(UserSchema)
    @blp.response(201, UserSchema)
    def post(self, body):
        """Create a user."""
        require_platform_admin(get_caller())
        user = accounts.create_user(body["email"], body["password"], is_admin=body["is_admin"])
        return user, 201, {"Location": url_for("users.UserItem", user_id=user.id)}


@blp.route("/<int:user_id>")
class UserItem(MethodView):
    @blp.response(200, UserSchema)
    def get(self, user_id):
        """Get a user."""
        user = get_or_404(User, user_id)  # 404 before 403
        require_platform_admin(get_caller())
        return user

    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="Would demote the last platform admin")
    def patch(self, body, user_id):
        """Change a user's password or platform-admin flag."""
        user = get_or_404(User, user_id)  # 404 before 403
        require_platform_admin(get_caller())
        if "password" in body:
            user.set_password(body["password"])
        if "is_admin" in body:
            if not body["is_admin"]:
                accounts.keep_a_platform_admin(user)
            user.is_admin = body["is_admin"]
        db.session.commit()
        return user

    @blp.response(204)
    @blp.alt_response(409, schema=ErrorSchema, description="Would delete the last platform admin")
    def delete(self, user_id):
        """Delete a user."""
        user = get_or_404(User, user_id)  # 404 before 403
        require_platform_admin(get_caller())
        accounts.keep_a_platform_admin(user)
        db.session.delete(user)
        db.session.commit()
