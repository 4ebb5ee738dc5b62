"""Empty values and fallbacks through the real API: `default` treats null, empty and blank values as missing,
the preview warns about contact variables that are empty for the previewed contact, and the variable
catalogue documents the fallback."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import make_account

API = "/api/v1"


async def _preview(client: httpx.AsyncClient, headers: dict[str, str], html: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"{API}/templates/preview", json={"subject": "Hello", "html": html, **body}, headers=headers)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_default_replaces_an_empty_first_name(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    html = "<p>Hi {{ contact.first_name | default('there') }}, {{ contact.company | default('friend') }}</p>"
    created = []
    for first_name, company in (("", "  "), (None, None), ("Ann", "ACME")):
        body = {"email": f"c{len(created)}@example.org", "first_name": first_name, "company": company}
        r = await client.post(f"{API}/contacts", json=body, headers=alice.headers)
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    outs = [await _preview(client, alice.headers, html, contact_id=cid) for cid in created]
    assert "Hi there, friend" in outs[0]["html"]
    assert "Hi there, friend" in outs[1]["html"]
    assert "Hi Ann, ACME" in outs[2]["html"]


async def test_preview_warns_about_empty_contact_variables(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(
        f"{API}/contacts",
        headers=alice.headers,
        json={"email": "ann@example.org", "first_name": "", "company": "ACME", "custom_attributes": {"city": " "}},
    )
    contact_id = r.json()["id"]
    html = (
        "<p>Hi {{ contact.first_name }} from {{ contact.company }} in {{ contact.attributes.city }}, "
        "{{ contact.last_name | default('') }} {{ name }}</p>"
    )
    out = await _preview(client, alice.headers, html, contact_id=contact_id)
    empty = sorted(w for w in out["warnings"] if " is empty for " in w)
    assert empty == [
        "contact.attributes.city is empty for this contact",
        "contact.first_name is empty for this contact",
        "contact.last_name is empty for this contact",
        "name is empty for this contact",
    ]

    sample = await _preview(client, alice.headers, html)
    assert [w for w in sample["warnings"] if " is empty for " in w] == [
        "contact.attributes.city is empty for the sample contact"
    ]


async def test_the_catalogue_documents_the_fallback(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    out = (await client.get(f"{API}/template-variables", headers=alice.headers)).json()
    (fallback,) = [f for f in out["filters"] if f["name"] == "default"]
    assert fallback["example"] == "{{ contact.first_name | default('there') }}"
    assert "empty" in fallback["description"]
    html = f"<p>Hi {fallback['example']}</p>"
    sample = await _preview(client, alice.headers, html)
    assert "Hi Jane" in sample["html"]
