"""/admin/members and /invite/<token>: invitations, roles, deactivation, the last admin."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select, update

from app.accounts import service as accounts
from app.clock import utcnow
from app.extensions import db
from app.models import ApiKey, AuditEvent, Invite, User
from tests.conftest import PASSWORD, bearer, create_user, issue_key, login

NEW_PASSWORD = "a different long passphrase 7"


def invite(client, email="newbie@example.com") -> str:
    response = client.post("/admin/members/invite", data={"email": email})
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    assert response.headers["Cache-Control"].startswith("no-store")
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    return soup.find(id="invite-link")["value"]


def path_of(link: str) -> str:
    return link[link.index("/invite/") :]


def user_id(app, email) -> int:
    with app.app_context():
        return accounts.get_user_by_email(email).id


def members_table(client) -> dict[str, str]:
    soup = BeautifulSoup(client.get("/admin/members").get_data(as_text=True), "html.parser")
    return {tr["data-user"]: tr.get_text(" ", strip=True) for tr in soup.select("tr[data-user]")}


def test_members_list_shows_role_keys_and_last_sign_in(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    issue_key(app, "bob@example.com")
    issue_key(app, "bob@example.com")
    rows = members_table(signed_in)
    assert set(rows) == {"alice@example.com", "bob@example.com"}
    assert (
        "never" in rows["bob@example.com"]
        and "ago" in rows["alice@example.com"]
        or ("just now" in rows["alice@example.com"])
    )
    soup = BeautifulSoup(signed_in.get("/admin/members").get_data(as_text=True), "html.parser")
    bob = soup.select_one('tr[data-user="bob@example.com"]')
    assert bob.select_one("option[selected]")["value"] == "member"
    assert bob.select("td")[2].get_text(strip=True) == "2"


def test_invite_link_is_shown_once_stored_as_digest_and_joins_as_member(app, signed_in, client):
    link = invite(signed_in)
    token = link.rsplit("/", 1)[1]
    assert len(token) >= 40
    with app.app_context():
        row = db.session.scalar(select(Invite))
        assert row.token_digest == hashlib.sha256(token.encode()).hexdigest()
        assert row.expires_at - row.created_at == timedelta(days=7)
        events = db.session.scalars(select(AuditEvent.details)).all()
    assert all(token not in d for d in events)
    again = signed_in.get("/admin/members").get_data(as_text=True)
    assert token not in again and "newbie@example.com" in again  # pending, link not shown

    other = app.test_client()
    page = other.get(path_of(link))
    assert page.status_code == 200 and "newbie@example.com" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"].startswith("no-store")
    weak = other.post(path_of(link), data={"password": "password1234", "confirm": "password1234"})
    assert weak.status_code == 400 and "too common" in weak.get_data(as_text=True)
    joined = other.post(path_of(link), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert joined.status_code == 302 and joined.headers["Location"].endswith("/keys")
    assert other.get("/keys").status_code == 200  # signed in
    with app.app_context():
        user = accounts.get_user_by_email("newbie@example.com")
        assert user.role == "member" and user.tenant.slug == "acme"
        actions = db.session.scalars(select(AuditEvent.action)).all()
    assert {"invite.created", "invite.accepted", "user.created"} <= set(actions)

    used = app.test_client().get(path_of(link))
    assert used.status_code == 410 and "already used" in used.get_data(as_text=True)
    fresh = app.test_client()
    assert login(fresh, "newbie@example.com", NEW_PASSWORD).status_code == 302


def test_expired_revoked_and_unknown_invites_say_so(app, signed_in):
    expired = invite(signed_in, "late@example.com")
    withdrawn = invite(signed_in, "nope@example.com")
    with app.app_context():
        db.session.execute(
            update(Invite)
            .where(Invite.email == "late@example.com")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        withdrawn_id = db.session.scalar(
            select(Invite.id).where(Invite.email == "nope@example.com")
        )
    signed_in.post(f"/admin/invites/{withdrawn_id}/revoke")
    client = app.test_client()
    for link, words in (
        (expired, "has expired"),
        (withdrawn, "was withdrawn"),
        ("/invite/not-a-real-token", "not valid"),
    ):
        for response in (
            client.get(path_of(link)),
            client.post(path_of(link), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}),
        ):
            assert response.status_code == 410 and words in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(User).where(User.email == "late@example.com")) is None


def test_invite_for_a_member_is_refused(signed_in):
    response = signed_in.post("/admin/members/invite", data={"email": "alice@example.com"})
    assert response.status_code == 400
    assert "already belongs to a member" in response.get_data(as_text=True)


def test_invites_do_not_reveal_accounts_of_other_organizations(app, signed_in):
    """An admin must not learn which addresses have accounts elsewhere: an invitation to
    one is made exactly like one to a new address; accepting it says the address is taken."""
    create_user(app, "carol@example.com", tenant="elsewhere")
    link = invite(signed_in, "carol@example.com")  # 200 with a link, as for anyone
    assert invite(signed_in, "nobody@example.com")
    accepting = app.test_client().post(
        path_of(link), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert accepting.status_code == 409


def test_accepting_after_the_address_got_an_account_says_so(app, signed_in):
    link = invite(signed_in, "late@example.com")
    create_user(app, "late@example.com", tenant="elsewhere")
    response = app.test_client().post(
        path_of(link), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert response.status_code == 409
    assert "cannot create an account for this address" in response.get_data(as_text=True)
    with app.app_context():  # still one account, in the tenant it was made in
        assert [u.tenant.slug for u in db.session.scalars(
            select(User).where(User.email == "late@example.com"))] == ["elsewhere"]  # fmt: skip


def test_concurrent_acceptance_has_one_winner(app, signed_in):
    link = path_of(invite(signed_in))
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def accept():
        client = app.test_client()
        barrier.wait()
        response = client.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [302, 410, 410, 410]
    with app.app_context():
        accepted = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "invite.accepted")
        ).all()
        assert len(accepted) == 1


def test_change_role_and_the_last_admin_stays(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    bob, alice = user_id(app, "bob@example.com"), user_id(app, "alice@example.com")
    response = signed_in.post(f"/admin/members/{alice}/role", data={"role": "member"},
                              follow_redirects=True)  # fmt: skip
    assert "last active admin" in response.get_data(as_text=True)
    signed_in.post(f"/admin/members/{bob}/role", data={"role": "admin"})
    assert "admin" in members_table(signed_in)["bob@example.com"]
    with app.app_context():
        assert accounts.get_user_by_email("bob@example.com").role == "admin"
        event = db.session.scalar(
            select(AuditEvent).where(AuditEvent.action == "member.role_changed")
        )
        assert event.target == "bob@example.com" and '"after":"admin"' in event.details
    # now there are two admins: alice may step down; then bob is the last one
    signed_in.post(f"/admin/members/{alice}/role", data={"role": "member"})
    with app.app_context():
        assert accounts.get_user_by_email("alice@example.com").role == "member"
    assert signed_in.get("/admin/members").status_code == 403  # alice is no admin any more


def test_last_admin_cannot_be_deactivated(app, signed_in):
    alice = user_id(app, "alice@example.com")
    response = signed_in.post(f"/admin/members/{alice}/deactivate", follow_redirects=True)
    assert "last active admin" in response.get_data(as_text=True)
    with app.app_context():
        assert accounts.get_user_by_email("alice@example.com").is_active


def test_deactivation_ends_sessions_blocks_sign_in_and_revokes_keys(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    bob_key = issue_key(app, "bob@example.com", name="bob ci")
    alice_key = issue_key(app, name="alice ci")
    bob_client = app.test_client()
    login(bob_client, "bob@example.com")
    assert bob_client.get("/keys").status_code == 200

    bob = user_id(app, "bob@example.com")
    response = signed_in.post(f"/admin/members/{bob}/deactivate", follow_redirects=True)
    assert "1 key revoked" in response.get_data(as_text=True)

    assert bob_client.get("/keys").status_code == 302  # the old session is over
    assert login(app.test_client(), "bob@example.com", PASSWORD).status_code == 401
    assert bob_client.get("/api/v1/me", headers=bearer(bob_key)).status_code == 401
    assert bob_client.get("/api/v1/me", headers=bearer(alice_key)).status_code == 200
    with app.app_context():
        key = db.session.scalar(select(ApiKey).where(ApiKey.name == "bob ci"))
        assert key.revoke_reason == "member_deactivated"
        actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    at = actions.index("member.deactivated")
    assert actions[at - 1] == "key.revoked"
    assert "auth.login_failed" in actions
    assert "deactivated" in members_table(signed_in)["bob@example.com"]


def test_deactivation_is_confirmed_on_a_page_that_states_the_keys_at_stake(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    issue_key(app, "bob@example.com", name="bob ci")
    issue_key(app, "bob@example.com", name="bob laptop")
    bob = user_id(app, "bob@example.com")
    soup = BeautifulSoup(signed_in.get("/admin/members").get_data(as_text=True), "html.parser")
    row = soup.select_one('tr[data-user="bob@example.com"]')
    assert not row.select("form[action$='/deactivate']")  # no one-click deactivation
    link = row.select_one("a[href$='/deactivate']")["href"]

    page = signed_in.get(link)  # looking does nothing
    assert page.status_code == 200
    text = " ".join(BeautifulSoup(page.get_data(as_text=True), "html.parser").get_text().split())
    assert "Deactivate bob@example.com?" in text and "2 working keys are revoked" in text
    assert members_table(signed_in)["bob@example.com"].count("deactivated") == 0

    form = BeautifulSoup(page.get_data(as_text=True), "html.parser").select_one("main form")
    assert form["method"] == "post" and form["action"] == f"/admin/members/{bob}/deactivate"
    done = signed_in.post(form["action"], follow_redirects=True)
    assert "2 keys revoked" in done.get_data(as_text=True)
    again = signed_in.get(link).get_data(as_text=True)
    assert "already deactivated" in again and "/deactivate" not in again


def test_members_of_other_tenants_are_404(app, signed_in):
    create_user(app, "eve@other.example", tenant="other", role="member")
    eve = user_id(app, "eve@other.example")
    assert signed_in.post(f"/admin/members/{eve}/deactivate").status_code == 404
    assert signed_in.get(f"/admin/members/{eve}/deactivate").status_code == 404
    assert signed_in.post(f"/admin/members/{eve}/role", data={"role": "admin"}).status_code == 404


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
def test_member_forms_need_csrf(app, client, user):
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    client.post("/login", data={"email": user, "password": PASSWORD, "csrf_token": token})
    assert client.post("/admin/members/invite", data={"email": "x@example.com"}).status_code == 400
    page = client.get("/admin/members").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    response = client.post(
        "/admin/members/invite", data={"email": "x@example.com", "csrf_token": token}
    )
    assert response.status_code == 200 and "invite-link" in response.get_data(as_text=True)
