"""Sign in with email and password and get a JWT."""

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from chatsvc.config import current_config
from chatsvc.errors import Unauthorized
from chatsvc.extensions import db
from chatsvc.models import User
from chatsvc.security.caller import issue_token

from .schemas import LoginSchema, TokenSchema

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Sign in")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema)
    def post(self, body):
        """Exchange email and password for a bearer token."""
        user = db.session.scalar(select(User).where(User.email == User.normalize_email(body["email"])))
        if user is None or not user.check_password(body["password"]):
            raise Unauthorized("Wrong email or password")
        return {
            "access_token": issue_token(user),
            "token_type": "Bearer",
            "expires_in": current_config().jwt_expires_seconds,
        }
