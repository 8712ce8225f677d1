from tests.conftest import KEY_RE, bearer, issue_key, secret_from_page


def test_register_create_key_see_it_once_and_use_it(client):
    response = client.post(
        "/register",
        data={
            "email": "dev@example.com",
            "password": "a long test passphrase 42",
            "confirm": "a long test passphrase 42",
            "organization": "Acme Corp",
        },
    )
    assert response.status_code == 302 and response.headers["Location"].endswith("/keys")

    response = client.post(
        "/keys/new", data={"name": "ci", "scopes": ["api:read", "keys:read"], "expires_in_days": 30}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"].startswith("no-store")
    key = secret_from_page(response.get_data(as_text=True))
    assert KEY_RE.fullmatch(key)

    listing = client.get("/keys").get_data(as_text=True)
    assert key not in listing and key.split("_")[1] in listing

    me = client.get("/api/v1/me", headers=bearer(key))
    assert me.status_code == 200
    assert me.json["user"] == {"email": "dev@example.com", "role": "admin"}
    assert me.json["tenant"]["slug"] == "acme-corp"


def test_api_key_from_service_authenticates(app, client, user):
    key = issue_key(app)
    assert client.get("/api/v1/me", headers=bearer(key)).json["key"]["scopes"] == ["api:read"]
    assert (
        client.get(
            "/api/v1/me", headers=bearer(key[:-1] + ("x" if key[-1] != "x" else "y"))
        ).status_code
        == 401
    )
