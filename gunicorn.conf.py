"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

They live in chatsvc/gunicorn_config.py (so `chatsvc serve` finds them in an
installed package) and are loaded by path: the master must not import the app.
"""

import pathlib
import runpy

globals().update(runpy.run_path(str(pathlib.Path(__file__).parent / "chatsvc" / "gunicorn_config.py")))
