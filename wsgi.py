"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from chatsvc import create_app

app = create_app()
