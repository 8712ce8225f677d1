"""A tenant admin's work in a real browser: the key inventory and its filters, incident
revoke, key policy, members and invitations, the audit log. Members are invited through
the product itself and join in a second browser context."""

from __future__ import annotations

import re
import time

import requests
from playwright.sync_api import expect

from tests.e2e.helpers import (
    NEW_PASSWORD,
    check_a11y,
    create_key,
    invite,
    join,
    key_id_of,
    mark,
    no_sideways_scroll,
    register,
    sign_out,
    unique,
)

DAY = 86400


def me(server, secret: str) -> requests.Response:
    return requests.get(
        server.url + "/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )


def listed(page) -> dict[str, str]:
    """{key id: status badge} of the inventory rows on the page, in page order."""
    return page.eval_on_selector_all(
        "tr[data-key-id]",
        "rows => Object.fromEntries(rows.map(r =>"
        " [r.dataset.keyId, r.querySelector('.badge').textContent.trim()]))",
    )


def filter_inventory(page, **fields) -> dict[str, str]:
    """Fill the filter form the way a person does and submit it."""
    page.goto("/admin/keys")
    form = page.get_by_role("form", name="Filter keys")
    labels = {
        "q": "Name contains",
        "owner": "Owner (email)",
        "expiring_within_days": "Expiring within (days)",
        "unused_for_days": "Unused for (days)",
    }
    for name, value in fields.items():
        if name in ("status", "scope"):
            form.get_by_label(name.capitalize(), exact=True).select_option(value)
        else:
            form.get_by_label(labels[name]).fill(str(value))
    with page.expect_navigation():
        form.get_by_role("button", name="Filter").click()
    return listed(page)


def test_invite_is_accepted_in_a_second_browser_and_deactivation_is_confirmed(
    page, new_context, server, axe_path
):
    org = unique("Invite Org ")
    register(page, organization=org)

    page.goto("/admin/keys")
    expect(page.get_by_role("heading", name=f"No keys in {org} yet")).to_be_visible()
    expect(page.get_by_role("link", name="Invite members")).to_be_visible()
    check_a11y(page, axe_path, "empty inventory")
    page.goto("/admin/audit?action=key.revoked")
    expect(page.get_by_role("heading", name="No events match")).to_be_visible()
    check_a11y(page, axe_path, "audit log, no match")

    page.goto("/admin/members")
    expect(page.get_by_text("None. Invitations you create wait here")).to_be_visible()
    check_a11y(page, axe_path, "members")
    email = f"{unique('newbie')}@example.com"
    link = invite(page, email)
    assert re.fullmatch(rf"{re.escape(server.url)}/invite/[\w-]{{40,}}", link), link
    check_a11y(page, axe_path, "members with the invitation link")
    page.goto("/admin/members")  # shown once: coming back no longer holds it
    expect(page.locator("#invite-link")).to_have_count(0)
    expect(page.get_by_role("region", name="Pending invitations")).to_contain_text(email)

    # The invitee, in a browser of their own: the page is accessible and a bad password is
    # explained beside the field.
    invitee = new_context().new_page()
    assert invitee.goto(link).status == 200
    expect(invitee.get_by_text(f"You were invited as {email}")).to_be_visible()
    check_a11y(invitee, axe_path, "invitation page")
    invitee.get_by_label("Choose a password").fill("short")
    invitee.get_by_label("Confirm password").fill("short")
    invitee.get_by_role("button", name=f"Join {org}").click()
    expect(invitee.locator("#password-error")).to_contain_text("12 to 128 characters")
    check_a11y(invitee, axe_path, "invitation page with an error")
    invitee.get_by_label("Choose a password").fill(NEW_PASSWORD)
    invitee.get_by_label("Confirm password").fill(NEW_PASSWORD)
    invitee.get_by_role("button", name=f"Join {org}").click()
    expect(invitee).to_have_url(re.compile(r"/keys$"))
    expect(invitee.get_by_role("status")).to_contain_text(f"Welcome to {org}")
    nav = invitee.get_by_role("navigation", name="Main")
    expect(nav).to_contain_text(email)
    expect(nav.get_by_role("link", name="All keys")).to_have_count(0)  # a member
    assert invitee.goto("/admin/keys").status == 403
    member_secret = create_key(invitee, "newbie laptop")

    # The link worked once.
    used = new_context().new_page()
    assert used.goto(link).status == 410
    expect(used.get_by_role("heading", name="This invitation cannot be used")).to_be_visible()
    check_a11y(used, axe_path, "used invitation")
    assert used.goto("/invite/not-a-real-token").status == 410
    check_a11y(used, axe_path, "invalid invitation")

    # Deactivating is confirmed on its own page, stating what it revokes.
    page.goto("/admin/members")
    row = page.locator(f"tr[data-user='{email}']")
    expect(row.locator("td[data-label='Working keys']")).to_have_text("1")
    row.get_by_role("link", name=f"Deactivate {email}…").click()
    expect(page.get_by_role("heading", name=f"Deactivate {email}?")).to_be_visible()
    expect(page.locator(".danger-note")).to_contain_text("Their 1 working key is revoked")
    check_a11y(page, axe_path, "deactivate confirmation")
    assert me(server, member_secret).status_code == 200  # looking changed nothing
    page.get_by_role("button", name="Deactivate and revoke 1 key").click()
    expect(page).to_have_url(re.compile(r"/admin/members$"))
    expect(page.get_by_role("status")).to_contain_text(f"{email} is deactivated")
    expect(row).to_contain_text("deactivated")
    assert me(server, member_secret).json()["error_description"] == "API key has been revoked"
    invitee.goto("/keys")
    expect(invitee).to_have_url(re.compile(r"/login"))  # signed out everywhere

    page.goto("/admin/audit")
    actions = page.eval_on_selector_all(
        "tr[data-action]", "rows => rows.map(r => r.dataset.action)"
    )
    for action in ("invite.created", "invite.accepted", "member.deactivated", "key.revoked"):
        assert action in actions, (action, actions)


def test_admin_filters_the_inventory_and_incident_revokes(page, new_context, server, axe_path):
    org = unique("Incident Org ")
    admin = register(page, organization=org)
    member_email = f"{unique('member')}@example.com"
    member = join(new_context, invite(page, member_email), org)

    secrets = {
        "deploy": create_key(page, "Deploy prod", ("deploy:production", "api:read")),
        "backup": create_key(page, "Nightly backup", ("api:read",), "7 days"),
        "staging": create_key(member, "Staging bot", ("deploy:staging",)),
        "laptop": create_key(member, "Member laptop", ("api:read",), "365 days"),
        "hotfix": create_key(member, "Hotfix runner", ("deploy:production",), "30 days"),
        "old": create_key(page, "Old importer", ("api:read",)),
    }
    ids = {name: key_id_of(secret) for name, secret in secrets.items()}
    now = int(time.time())
    mark(server, ids["laptop"], created_at=now - 100 * DAY, last_used_at=now - 45 * DAY)
    assert me(server, secrets["deploy"]).status_code == 200  # records last use and address

    page.goto("/admin/keys")
    everything = listed(page)
    assert set(everything) == set(ids.values())
    expect(page.locator("#result-count")).to_contain_text("6 keys")
    deploy_row = page.locator(f"tr[data-key-id='{ids['deploy']}']")
    expect(deploy_row.locator("td[data-label='Last used']")).to_have_text("just now from 127.0.0.1")
    expect(deploy_row.locator("td[data-label='Owner']")).to_have_text(admin)
    expect(page.locator("tr.mark-expiring")).to_have_attribute("data-key-id", ids["backup"])
    expect(page.locator("tr.mark-unused")).to_have_attribute("data-key-id", ids["laptop"])
    check_a11y(page, axe_path, "inventory with rows")

    # Revoke one key, confirmed on a page of its own; Cancel and Revoke both come back here.
    page.goto("/admin/keys?q=importer")
    page.get_by_role("link", name="Revoke Old importer…").click()
    expect(page.get_by_role("heading", name="Revoke “Old importer”?")).to_be_visible()
    check_a11y(page, axe_path, "admin single-key revoke confirmation")
    page.get_by_role("link", name="Cancel, keep it").click()
    expect(page).to_have_url(re.compile(r"/admin/keys\?q=importer$"))
    assert listed(page) == {ids["old"]: "active"}
    page.get_by_role("link", name="Revoke Old importer…").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page).to_have_url(re.compile(r"/admin/keys\?q=importer$"))
    expect(page.get_by_role("status")).to_contain_text("“Old importer”")
    assert listed(page) == {ids["old"]: "revoked"}
    assert me(server, secrets["old"]).status_code == 401

    # Each filter, from the form.
    assert set(filter_inventory(page, owner=member_email)) == {
        ids["staging"], ids["laptop"], ids["hotfix"]
    }  # fmt: skip
    expect(page.get_by_label("Owner (email)")).to_have_value(member_email)  # filters stay put
    check_a11y(page, axe_path, "inventory filtered by owner")
    assert filter_inventory(page, status="expiring") == {ids["backup"]: "expiring"}
    assert filter_inventory(page, status="revoked") == {ids["old"]: "revoked"}
    assert set(filter_inventory(page, scope="deploy:production")) == {ids["deploy"], ids["hotfix"]}
    assert set(filter_inventory(page, expiring_within_days=30)) == {ids["backup"], ids["hotfix"]}
    assert set(filter_inventory(page, unused_for_days=30)) == {ids["laptop"]}
    assert set(filter_inventory(page, q="BOT")) == {ids["staging"]}
    assert set(filter_inventory(page, owner=member_email, scope="deploy:production")) == {
        ids["hotfix"]
    }
    assert filter_inventory(page, q="no such key") == {}
    expect(page.get_by_role("heading", name="No keys match these filters")).to_be_visible()
    check_a11y(page, axe_path, "inventory, nothing matches")

    # Incident: everything holding deploy:production, after a page that states the count.
    filter_inventory(page, scope="deploy:production")
    page.get_by_role("link", name="Revoke all matching keys…").click()
    expect(page).to_have_url(re.compile(r"/admin/keys/revoke\?scope=deploy(:|%3A)production$"))
    expect(page.locator("#revoke-count")).to_contain_text("This will revoke 2 keys.")
    check_a11y(page, axe_path, "incident revoke confirmation")
    for name in ("deploy", "hotfix"):
        assert me(server, secrets[name]).status_code == 200  # nothing happened yet
    page.get_by_role("button", name="Revoke 2 keys").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked 2 keys. They no longer work.")
    assert listed(page) == {ids["deploy"]: "revoked", ids["hotfix"]: "revoked"}
    for name in ("deploy", "hotfix"):
        answer = me(server, secrets[name])
        assert answer.status_code == 401
        assert answer.json()["error_description"] == "API key has been revoked"
    for name in ("backup", "staging", "laptop"):
        assert me(server, secrets[name]).status_code == 200  # untouched
    # The member sees it on their own list too.
    member.goto("/keys")
    expect(
        member.locator("tr", has=member.get_by_text("Hotfix runner")).locator(".badge")
    ).to_have_text("revoked")

    # Nothing left to revoke: the confirmation says so and offers no button.
    page.goto("/admin/keys/revoke?scope=deploy%3Aproduction")
    expect(page.locator("#revoke-count")).to_contain_text("nothing to revoke")
    expect(page.get_by_role("button", name=re.compile("Revoke"))).to_have_count(0)

    # The key page shows who revoked it and why.
    page.goto(f"/admin/keys/{ids['hotfix']}")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    expect(page.locator(".details")).to_contain_text(f"incident by {admin}")
    check_a11y(page, axe_path, "admin key detail")

    # The audit trail: one key.revoked per key, by the admin, filterable by action.
    page.goto("/admin/audit")
    check_a11y(page, axe_path, "audit log")
    page.get_by_label("Action").select_option("key.revoked")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"action=key\.revoked"))
    rows = page.locator("tr[data-action]")
    expect(rows).to_have_count(3)
    targets = rows.locator("td[data-label=Target] code").all_inner_texts()
    assert sorted(targets) == sorted([ids["old"], ids["deploy"], ids["hotfix"]])
    for actor in rows.locator("td[data-label=Actor]").all_inner_texts():
        assert admin in actor
    check_a11y(page, axe_path, "audit log filtered by action")


def test_policy_limits_what_a_member_may_create(page, new_context, server, axe_path):
    org = unique("Policy Org ")
    register(page, organization=org)
    member_email = f"{unique('member')}@example.com"
    member = join(new_context, invite(page, member_email), org)

    page.goto("/admin/policy")
    check_a11y(page, axe_path, "policy")
    lifetime = page.get_by_label("Maximum key lifetime (days)")
    lifetime.fill("99999")
    page.get_by_role("button", name="Save policy").click()
    expect(page.locator("#max_key_lifetime_days-error")).to_have_text(
        re.compile("Enter 0 \\(no maximum\\) to 3650 days")
    )
    expect(lifetime).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert").first).to_contain_text("The policy was not saved")
    check_a11y(page, axe_path, "policy with an error")

    lifetime.fill("30")
    page.get_by_label("Every key must expire").check()
    scopes = page.get_by_role("group", name="Scopes members may grant")
    for box in scopes.get_by_role("checkbox").all():
        box.uncheck()
    scopes.get_by_label(re.compile(r"^api:read")).check()
    scopes.get_by_label(re.compile(r"^keys:read")).check()
    page.get_by_role("button", name="Save policy").click()
    expect(page.get_by_role("status")).to_contain_text("Policy saved")
    expect(lifetime).to_have_value("30")
    expect(page.get_by_label("Every key must expire")).to_be_checked()

    # The member's form offers only what the policy allows.
    member.goto("/keys/new")
    offered = member.eval_on_selector_all("input[name=scopes]", "els => els.map(e => e.value)")
    assert offered == ["api:read", "keys:read"]
    expiry = member.get_by_label("Expires in")
    options = expiry.locator("option").all_inner_texts()
    assert options == ["7 days", "30 days", "A date of your choice"]  # no "Never"
    expect(member.get_by_text("every key must expire; keys live at most 30 days")).to_be_visible()
    check_a11y(member, axe_path, "new key form under a policy")

    # A form from before the change (or a crafted one) is refused, naming the rule.
    member.get_by_label("Name").fill("sneaky")
    member.get_by_label(re.compile(r"^api:read")).check()
    member.evaluate(
        "document.querySelector('ul.checkboxes').insertAdjacentHTML('beforeend',"
        " '<li><input type=checkbox name=scopes value=deploy:production id=x checked>"
        "<label for=x>deploy:production</label></li>')"
    )
    member.get_by_role("button", name="Create key").click()
    expect(member.locator("#scopes-error")).to_have_text(
        "Your organization's policy does not let members grant: deploy:production"
    )
    expect(member.locator("#new-key-secret")).to_have_count(0)
    check_a11y(member, axe_path, "new key form refused by the policy")
    member.evaluate(
        "document.querySelector('#expires_in_days').insertAdjacentHTML('beforeend',"
        " '<option value=0>Never</option>')"
    )
    member.get_by_label("Expires in").select_option(label="Never")
    member.get_by_role("button", name="Create key").click()
    expect(member.locator("#expires_in_days-error")).to_have_text(
        "Your organization's policy requires every key to expire"
    )
    expect(member.locator("#new-key-secret")).to_have_count(0)

    # Within the policy it works.
    secret = create_key(member, "allowed", ("keys:read",), "30 days")
    assert me(server, secret).json()["key"]["scopes"] == ["keys:read"]

    page.goto("/admin/audit")
    page.get_by_label("Action").select_option("policy.changed")
    page.get_by_role("button", name="Filter").click()
    change = page.locator("tr[data-action='policy.changed']")
    expect(change).to_have_count(1)
    details = change.locator("td[data-label=Details]")
    expect(details).to_contain_text("max_key_lifetime_days 0 → 30")
    expect(details).to_contain_text("require_expiry false → true")
    expect(details).to_contain_text("member_scopes")


def test_admin_pages_fit_a_phone(new_context, server):
    page = new_context(viewport={"width": 375, "height": 740}).new_page()
    admin = register(page)
    secret = create_key(
        page, "a key with a rather long descriptive name", ("api:read", "api:write")
    )
    key_id = key_id_of(secret)
    link = invite(page, f"{unique('phone')}@example.com")
    assert "/invite/" in link
    no_sideways_scroll(page, "members with an invitation link")
    me(server, secret)
    for path in (
        "/admin/keys",
        "/admin/keys?status=active&scope=api:read",
        "/admin/keys/revoke?scope=api:read",
        f"/admin/keys/{key_id}",
        f"/admin/keys/{key_id}/revoke",
        "/admin/members",
        "/admin/policy",
        "/admin/audit",
    ):
        assert page.goto(path).status == 200, path
        no_sideways_scroll(page, path)
    # The inventory is a list of cards on a phone, each with its own labels.
    page.goto("/admin/keys")
    expect(page.locator(f"tr[data-key-id='{key_id}']")).to_have_css("display", "block")
    expect(page.locator(f"tr[data-key-id='{key_id}'] td[data-label=Owner]")).to_have_text(admin)
    sign_out(page)
    assert page.goto(link).status == 200
    no_sideways_scroll(page, "invitation page")


def test_destructive_admin_actions_work_without_javascript(new_context, server):
    page = new_context(java_script_enabled=False).new_page()
    org = unique("NoJS Org ")
    register(page, organization=org)
    secret = create_key(page, "no-js admin key")
    page.goto("/admin/keys")
    page.get_by_role("link", name="Revoke no-js admin key…").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    assert me(server, secret).status_code == 401

    email = f"{unique('nojs')}@example.com"
    link = invite(page, email)
    join(new_context, link, org)
    page.goto("/admin/members")
    page.get_by_role("link", name=f"Deactivate {email}…").click()
    page.get_by_role("button", name="Deactivate member").click()
    expect(page.get_by_role("status")).to_contain_text(f"{email} is deactivated")
