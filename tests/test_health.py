"""/healthz: 200 when the database answers, 503 JSON when it does not."""

import socket

from app import create_app
from app.extensions import db


def health_of(tmp_path, database_url: str):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SECRET_KEY": "s",
            "KEYDESK_KEY_PEPPER": "p",
        }
    )
    try:
        return app.test_client().get("/healthz")
    finally:
        with app.app_context():
            db.engine.dispose()


def test_healthy(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.is_json and response.json == {"status": "ok"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_sqlite_in_a_missing_directory_is_503_json(tmp_path):
    response = health_of(tmp_path, f"sqlite:///{tmp_path / 'missing' / 'dir' / 'db.sqlite3'}")
    assert response.status_code == 503
    assert response.is_json and response.json["status"] != "ok"
    assert not (tmp_path / "missing").exists()


def test_postgres_on_a_closed_port_is_503_json(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    response = health_of(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing")
    assert response.status_code == 503
    assert response.is_json and response.json["status"] != "ok"
    assert "password" not in response.get_data(as_text=True)
