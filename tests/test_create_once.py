"""Issue 13.1: a form that creates something creates it once. Submitting the same form
again (a reload of the reveal page, Back then Forward) shows what it created, without the
secret, and creates nothing."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import func, select

from app import once
from app.clock import utcnow
from app.extensions import db
from app.models import ApiKey, AuditEvent, FormSubmission, Invite
from tests.conftest import KEY_RE, create_user, issue_key, login


def token_of(html: str, form_action: str | None = None) -> str:
    page = BeautifulSoup(html, "html.parser")
    forms = page.find_all("form")
    if form_action:
        forms = [f for f in forms if f.get("action", "").endswith(form_action)]
    fields = [f.find("input", attrs={"name": "submission"}) for f in forms]
    fields = [f for f in fields if f is not None]
    assert fields and fields[0]["value"], "no submission token in the form"
    return fields[0]["value"]


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar()


NEW_KEY = {"name": "CI deploy", "scopes": ["api:read"], "expires_in_days": "30"}


def test_reloading_the_reveal_page_creates_no_second_key(app, signed_in):
    token = token_of(signed_in.get("/keys/new").get_data(as_text=True), None)
    first = signed_in.post("/keys/new", data={**NEW_KEY, "submission": token})
    assert first.status_code == 200 and KEY_RE.search(first.get_data(as_text=True))
    again = signed_in.post("/keys/new", data={**NEW_KEY, "submission": token})
    html = again.get_data(as_text=True)
    assert again.status_code == 200
    assert again.headers["Cache-Control"] == "no-store"
    assert KEY_RE.search(html) is None and 'id="new-key-secret"' not in html
    page = BeautifulSoup(html, "html.parser")
    assert "already created" in page.find("h1").text
    with app.app_context():
        (key_id,) = db.session.execute(select(ApiKey.key_id)).scalars().all()
        assert key_id in page.find(id="already-created").text  # what was created
    assert count(app, ApiKey) == 1
    assert count(app, AuditEvent, AuditEvent.action == "key.issued") == 1
    # A fresh form is a new token: a second key on purpose is still one click away.
    other = token_of(signed_in.get("/keys/new").get_data(as_text=True))
    assert other != token
    assert signed_in.post("/keys/new", data={**NEW_KEY, "submission": other}).status_code == 200
    assert count(app, ApiKey) == 2


def test_a_refused_form_keeps_its_token_and_creates_once_when_fixed(app, signed_in):
    token = token_of(signed_in.get("/keys/new").get_data(as_text=True))
    bad = signed_in.post("/keys/new", data={**NEW_KEY, "name": "", "submission": token})
    assert bad.status_code == 400
    assert token_of(bad.get_data(as_text=True)) == token  # nothing was created with it
    assert signed_in.post("/keys/new", data={**NEW_KEY, "submission": token}).status_code == 200
    signed_in.post("/keys/new", data={**NEW_KEY, "submission": token})
    assert count(app, ApiKey) == 1


def test_repeating_a_rotation_rotates_once_and_shows_the_successor(app, signed_in):
    key_id = issue_key(app).split("_")[1]
    token = token_of(signed_in.get(f"/keys/{key_id}").get_data(as_text=True), "/rotate")
    first = signed_in.post(f"/keys/{key_id}/rotate", data={"grace_hours": "1", "submission": token})
    assert first.status_code == 200 and KEY_RE.search(first.get_data(as_text=True))
    again = signed_in.post(f"/keys/{key_id}/rotate", data={"grace_hours": "1", "submission": token})
    html = again.get_data(as_text=True)
    assert again.status_code == 200 and KEY_RE.search(html) is None
    with app.app_context():
        successors = (
            db.session.execute(select(ApiKey.key_id).where(ApiKey.rotated_from == key_id))
            .scalars()
            .all()
        )
    assert len(successors) == 1
    assert "already rotated" in html and successors[0] in html
    assert count(app, AuditEvent, AuditEvent.action == "key.rotated") == 1


def test_the_banner_rotate_button_carries_its_own_token(app, signed_in):
    key_id = issue_key(app, days=3).split("_")[1]
    html = signed_in.get("/keys").get_data(as_text=True)
    token = token_of(html, f"/keys/{key_id}/rotate")
    data = {"grace_hours": "24", "submission": token}
    assert KEY_RE.search(signed_in.post(f"/keys/{key_id}/rotate", data=data).get_data(as_text=True))
    again = signed_in.post(f"/keys/{key_id}/rotate", data=data)
    assert again.status_code == 200 and "already rotated" in again.get_data(as_text=True)


def test_repeating_an_invitation_invites_once_and_shows_no_link(app, signed_in):
    token = token_of(signed_in.get("/admin/members").get_data(as_text=True), "/members/invite")
    data = {"email": "new@example.com", "submission": token}
    first = signed_in.post("/admin/members/invite", data=data)
    assert first.status_code == 200 and "/invite/" in first.get_data(as_text=True)
    again = signed_in.post("/admin/members/invite", data=data)
    html = again.get_data(as_text=True)
    assert again.status_code == 200
    assert "/invite/" not in html  # the link is a credential, shown once
    assert "already created" in html and "new@example.com" in html
    assert count(app, Invite) == 1
    assert count(app, AuditEvent, AuditEvent.action == "invite.created") == 1


@pytest.mark.parametrize(
    "token", ["x" * 1000, "short", "has space in it 0123456789", "bad\u202etoken0123456789"]
)
def test_an_altered_token_is_400_and_creates_nothing(app, signed_in, token):
    response = signed_in.post("/keys/new", data={**NEW_KEY, "submission": token})
    assert response.status_code == 400
    assert count(app, ApiKey) == 0


def test_another_persons_or_another_forms_token_is_refused(app, client, user):
    create_user(app, "bob@example.com", role="member")
    login(client)
    token = token_of(client.get("/keys/new").get_data(as_text=True))
    assert client.post("/keys/new", data={**NEW_KEY, "submission": token}).status_code == 200
    key_id = issue_key(app).split("_")[1]
    # the new-key form's token on the rotate form: refused, nothing rotated
    reused = client.post(f"/keys/{key_id}/rotate", data={"grace_hours": "1", "submission": token})
    assert reused.status_code == 400
    client.post("/logout")
    login(client, "bob@example.com")
    stolen = client.post("/keys/new", data={**NEW_KEY, "submission": token})
    assert stolen.status_code == 400 and "CI deploy" not in stolen.get_data(as_text=True)
    assert count(app, ApiKey) == 2


def test_a_form_without_a_token_still_creates(app, signed_in):
    """Scripts and older pages post without one: the token protects browsers only."""
    assert signed_in.post("/keys/new", data=NEW_KEY).status_code == 200
    assert signed_in.post("/keys/new", data=NEW_KEY).status_code == 200
    assert count(app, ApiKey) == 2


def test_the_second_of_two_racing_submissions_loses_at_the_unique_digest(app, user):
    """remember() is the race guard: a token already committed raises AlreadySubmitted."""
    from app.accounts import service as accounts

    token = once.new_token()
    with app.app_context():
        uid = accounts.get_user_by_email(user).id
        once.remember(token=token, user_id=uid, purpose="key.new", result="A", now=utcnow())
        db.session.commit()
        with pytest.raises(once.AlreadySubmitted):
            once.remember(token=token, user_id=uid, purpose="key.new", result="B", now=utcnow())
        db.session.rollback()
        rows = db.session.execute(select(FormSubmission)).scalars().all()
        assert [r.result for r in rows] == ["A"]
        assert token not in rows[0].token_digest  # only its digest is stored


def test_a_persons_old_submissions_are_dropped_as_new_ones_come(app, user):
    from datetime import timedelta

    from app.accounts import service as accounts

    with app.app_context():
        uid = accounts.get_user_by_email(user).id
        old = utcnow() - once.REMEMBER_FOR - timedelta(days=1)
        once.remember(token=once.new_token(), user_id=uid, purpose="key.new", result="old", now=old)
        db.session.commit()
        once.remember(
            token=once.new_token(), user_id=uid, purpose="key.new", result="new", now=utcnow()
        )
        db.session.commit()
        results = db.session.execute(select(FormSubmission.result)).scalars().all()
        assert results == ["new"]
