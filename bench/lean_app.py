"""The floor for an authenticated call: a bare Flask app whose one view does only what every
key check must (split the token, one lookup on a raw DBAPI connection, HMAC, compare) and
nothing Keydesk adds (checksum, rate limits, usage counting, IP allow-lists, hooks, the
richer /me body). `bench/run.py --lean` serves it beside the others, so the table shows
what those features cost side by side. Not part of Keydesk; reads the benchmark's env.
"""

import hashlib
import hmac
import os

from flask import Flask, jsonify, request
from sqlalchemy.engine import make_url

from app.keys.authn import _LOOKUP

app = Flask(__name__)
_url = make_url(os.environ["KEYDESK_DATABASE_URL"])
_keyed = hmac.new(os.environ["KEYDESK_KEY_PEPPER"].encode(), digestmod=hashlib.sha256)
if _url.get_backend_name() == "sqlite":
    import sqlite3

    _conn = sqlite3.connect(_url.database, isolation_level=None, check_same_thread=False)
    _sql = _LOOKUP.format(param="?")
else:
    import psycopg

    conninfo = _url.set(drivername="postgresql").render_as_string(hide_password=False)
    _conn = psycopg.connect(conninfo, autocommit=True)
    _sql = _LOOKUP.format(param="%s")


@app.get("/ping")
def ping():  # for bench/run.py to see that it is up
    return jsonify(pong=True)


@app.get("/me")
def me():
    _, key_id, rest = request.headers.get("Authorization", "")[7:].split("_")
    rows = _conn.execute(_sql, (key_id,)).fetchall()
    mac = _keyed.copy()
    mac.update(rest[:-6].encode())
    if not rows or not hmac.compare_digest(mac.digest(), bytes(rows[0][2])):
        return jsonify(error="invalid_token"), 401
    return jsonify(key={"id": key_id, "name": rows[0][3]})
