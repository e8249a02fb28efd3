"""The reference point of bench_run_start.py: a bare Flask POST under chatsvc's gunicorn settings."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/hello")
def hello():
    return jsonify({"hello": (request.get_json(silent=True) or {}).get("name", "world")})


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})
