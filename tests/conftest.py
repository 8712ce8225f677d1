"""Shared fixtures: `app` (a fresh database per test, cheap argon2), `client`, `runner`,
and helpers to create users, sign in and issue keys."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db

PASSWORD = "a long test passphrase 42"
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def make_app(tmp_path, **overrides) -> Flask:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret-key",
        "KEYDESK_KEY_PEPPER": "test-pepper",
        "KEYDESK_ARGON2": FAST_ARGON2,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_STORAGE_URI": "memory://",
    }
    config.update(overrides)
    app = create_app(config)
    with app.app_context():
        db.create_all()  # tests only; the app itself relies on migrations
    return app


@pytest.fixture
def app_config() -> dict:
    """Override in a test module (or with indirect parametrization) to change config."""
    return {}


@pytest.fixture
def app(tmp_path, app_config) -> Iterator[Flask]:
    app = make_app(tmp_path, **app_config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def ctx(app):
    """An application context for calling services directly."""
    with app.app_context():
        yield


def create_user(app, email="alice@example.com", *, tenant="acme", role="admin", password=PASSWORD):
    """Create (or reuse) a tenant and a user directly through the services; returns the email."""
    from app.accounts import service as accounts

    with app.app_context():
        t = accounts.get_tenant_by_slug(tenant) or accounts.create_tenant(
            name=tenant.title(), slug=tenant, now=utcnow()
        )
        accounts.create_user(
            tenant=t, email=email, password=password, role=role, now=utcnow(),
            actor=Actor.cli(), check_rules=False,
        )  # fmt: skip
        db.session.commit()
    return email


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/login", data={"email": email, "password": password})


def issue_key(app, email="alice@example.com", *, scopes=("api:read",), days=0, name="test key"):
    """Issue a key through the service; returns the full key string."""
    from app.accounts import service as accounts
    from app.keys import service as keys

    with app.app_context():
        user = accounts.get_user_by_email(email)
        _, full = keys.issue_key(
            user=user, name=name, scopes=scopes, expires_in_days=days, now=utcnow(),
            actor=Actor.cli(),
        )  # fmt: skip
        db.session.commit()
    return full


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def secret_from_page(html: str) -> str:
    from bs4 import BeautifulSoup

    field = BeautifulSoup(html, "html.parser").find(id="new-key-secret")
    assert field is not None, "no #new-key-secret on the page"
    return field.get("value") or field.get_text(strip=True)


KEY_RE = re.compile(r"\bkd_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b")


@pytest.fixture
def user(app) -> str:
    return create_user(app)


@pytest.fixture
def signed_in(client, user) -> FlaskClient:
    response = login(client)
    assert response.status_code == 302
    return client
