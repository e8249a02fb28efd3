"""Sign in with email and password and get a JWT."""

from functools import cache

from flask.views import MethodView
from flask_smorest import Blueprint
from chatsvc import accounts, passwords
from chatsvc.config import current_config
from chatsvc.errors import Unauthorized
from chatsvc.security.caller import issue_token

from .request_limits import refuses_nul_with
from .schemas import LoginSchema, TokenSchema


@cache
def _dummy_hash() -> str:
    return passwords.hash_password("chatsvc-no-such-user")


blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Sign in")


def wrong_credentials() -> Unauthorized:
    """The one answer to every failed sign-in: it does not tell which part was wrong."""
    return Unauthorized("Wrong email or password")


@blp.route("/login")
@refuses_nul_with(wrong_credentials)  # no account holds a NUL: as any unknown email
class Login(MethodView):
    @blp.doc(security=[])  # the one way in without credentials
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema)
    def post(self, body):
        """Exchange email and password for a bearer token."""
        user = accounts.find_user(body["email"])
        if user is None:
            # Spend the same hashing time as a real check, so timing does not reveal emails.
            passwords.check_password(_dummy_hash(), body["password"])
            raise wrong_credentials()
        if not user.check_password(body["password"]):
            raise wrong_credentials()
        return {
            "access_token": issue_token(user),
            "token_type": "Bearer",
            "expires_in": current_config().jwt_expires_seconds,
        }
