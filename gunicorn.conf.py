"""gunicorn configuration: `gunicorn -c gunicorn.conf.py wsgi:app` (settings in chatsvc/gunicorn_config.py)."""

from chatsvc.gunicorn_config import *  # noqa: F401,F403
from chatsvc.gunicorn_config import on_starting  # noqa: F401
