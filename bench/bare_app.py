"""The smallest Flask app served the same way as Keydesk: the benchmark's baseline."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():
    return jsonify(pong=True)
