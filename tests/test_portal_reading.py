"""What a person reads: times rounded as people count (13.4), the usage chart's scale,
dates and numbers (13.7), plurals (13.12) and the tenant slug in sight (13.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.clock import utcnow
from app.extensions import db
from app.models import ApiKey, KeyUsageDaily
from app.templating import relative_time
from tests.conftest import issue_key

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (timedelta(days=7, seconds=-1), "in 7 days"),  # a new 7-day key (flooring said 6)
        (timedelta(days=7, seconds=-30), "in 7 days"),
        (timedelta(hours=24, seconds=-1), "in 24 hours"),  # a 24-hour grace (said 23)
        (timedelta(hours=36), "in 36 hours"),
        (timedelta(hours=37), "in 2 days"),
        (timedelta(days=89, hours=23, minutes=59), "in 90 days"),
        (timedelta(minutes=59, seconds=40), "in 1 hour"),
        (timedelta(minutes=1, seconds=20), "in 1 minute"),
        (timedelta(seconds=10), "in a moment"),
        (timedelta(seconds=-10), "just now"),
        (-timedelta(hours=2, minutes=40), "3 hours ago"),
        (-timedelta(days=1, hours=23), "2 days ago"),
        (-timedelta(days=3, hours=13), "4 days ago"),
    ],
)
def test_relative_times_round_to_what_a_person_expects(offset, text):
    assert relative_time(NOW + offset, NOW) == text


def test_a_new_seven_day_key_reads_in_7_days_with_the_exact_time_on_hover(app, signed_in):
    issue_key(app, days=7)
    page = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    cell = page.find("td", attrs={"data-label": "Expires"}).find("time")
    assert cell.text == "in 7 days"
    assert cell["title"].endswith(" UTC") and cell["title"][:4].isdigit()


def usage(app, key_id: str, counts: dict[int, int]) -> None:
    with app.app_context():
        pk = db.session.execute(select(ApiKey.id).where(ApiKey.key_id == key_id)).scalar_one()
        today = utcnow().date()
        for days_ago, count in counts.items():
            db.session.add(
                KeyUsageDaily(api_key_id=pk, day=today - timedelta(days=days_ago), count=count)
            )
        db.session.commit()


def test_usage_chart_has_axes_total_busiest_day_and_a_table(app, signed_in):
    key_id = issue_key(app).split("_")[1]
    usage(app, key_id, {1: 1, 5: 7})
    page = BeautifulSoup(signed_in.get(f"/keys/{key_id}").get_data(as_text=True), "html.parser")
    today = utcnow().date()
    busiest = today - timedelta(days=5)
    summary = page.find(id="usage-summary").get_text(" ", strip=True)
    assert summary.startswith("8 requests in 30 days")
    assert f"busiest day {busiest.strftime('%b')} {busiest.day} with 7 requests" in summary
    ticks = [t.get_text() for t in page.select("svg text.tick")]
    assert "0" in ticks and "7" in ticks  # the scale
    first = today - timedelta(days=29)
    assert f"{first.strftime('%b')} {first.day}" in ticks  # the dates
    assert f"{today.strftime('%b')} {today.day} (today)" in ticks
    rows = page.select("details.usage-table tbody tr")
    assert len(rows) == 30
    numbers = {r.find("th").get_text(): r.find("td").get_text() for r in rows}
    assert numbers[busiest.isoformat()] == "7" and numbers[today.isoformat()] == "0"
    assert page.select_one("rect.bar.peak title").get_text() == f"{busiest}: 7 requests"


def test_one_request_is_singular(app, signed_in):
    key_id = issue_key(app).split("_")[1]
    usage(app, key_id, {0: 1})
    html = signed_in.get(f"/keys/{key_id}").get_data(as_text=True)
    summary = BeautifulSoup(html, "html.parser").find(id="usage-summary").get_text(" ", strip=True)
    assert summary.startswith("1 request in 30 days") and "1 requests" not in html


def test_the_slug_is_on_my_keys_and_in_the_reveal_example(app, signed_in):
    page = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    slug = page.find(id="tenant-slug")
    assert "acme" in slug.find("code").text
    assert "/api/v1/tenant/acme/api-keys/list" in slug.text
    reveal = signed_in.post(
        "/keys/new", data={"name": "n", "scopes": ["api:read"], "expires_in_days": "30"}
    )
    example = BeautifulSoup(reveal.get_data(as_text=True), "html.parser").find(id="slug-example")
    assert "/api/v1/tenant/acme/api-keys/list" in example.text
    assert "$KEYDESK_API_KEY" in example.text
