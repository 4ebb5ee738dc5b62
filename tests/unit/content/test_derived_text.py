"""The text part derived once from the HTML source must say what converting each rendered HTML says."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from edm.content.render import append_compliance_footer, build_context, compile_template, footer_text, html_to_text

TEMPLATES = [
    "<html><body><h1>Hi {{ contact.first_name | default('there', true) }}</h1>"
    "<p>Your code: <b>{{ contact.attributes.code }}</b></p><ul>{% for t in contact.tags %}<li>{{ t }}</li>"
    "{% endfor %}</ul><a href='https://shop.example.com/{{ contact.attributes.code }}'>Shop</a></body></html>",
    "<p>{% if contact.company %}Hello {{ contact.company }} team{% else %}Hello friend{% endif %} &amp; welcome</p>",
    '<table><tr><td>{{ name }}</td><td>{{ email }}</td></tr></table><p><a href="{{ unsubscribe_url }}">Leave</a></p>',
]
CONTACTS = [
    {
        "email": "a@example.com",
        "first_name": "Ann",
        "company": "Acme & Co",
        "attributes": {"code": "X<1>"},
        "tags": ["vip", "news"],
    },
    {"email": "b@example.com", "name": "Bob O'Brien", "attributes": {}, "tags": []},
]


def _ctx(contact: dict[str, object]) -> dict[str, object]:
    return build_context(
        contact=contact,
        sender={},
        task={"name": "t"},
        org={"postal_address": "1 Main St"},
        unsubscribe_url="https://u.example.com/u/tok",
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


@pytest.mark.parametrize("html", TEMPLATES)
@pytest.mark.parametrize("contact", CONTACTS)
def test_derived_text_equals_converting_the_rendered_html(html: str, contact: dict[str, object]) -> None:
    template = compile_template(subject="s", html=html)
    assert template.derived_text is not None, "these ordinary templates take the fast path"
    converted = dataclasses.replace(template, derived_text=None)
    fast, slow = template.render(_ctx(contact)), converted.render(_ctx(contact))
    assert fast.html == slow.html
    assert fast.text.split() == slow.text.split()


@pytest.mark.parametrize(
    "html",
    [
        "<p>{{ contact.attributes.bio | safe }} text</p>",
        "{% autoescape false %}<p>{{ contact.attributes.bio }}</p>{% endautoescape %}",
    ],
)
def test_markup_from_values_falls_back_to_converting_each_mail(html: str) -> None:
    # Markup inside a value is a tag only after rendering: a derived text template would show it raw.
    template = compile_template(subject="s", html=html)
    assert template.derived_text is None
    contact = {"email": "a@example.com", "attributes": {"bio": "<b>bold</b><br>second"}}
    text = template.render(_ctx(contact)).text
    assert "<b>" not in text and text.split()[:2] == ["bold", "second"]


@pytest.mark.parametrize(
    "url",
    [
        "https://t.example.com/u/AQNkZXJpdmVkLXRleHQtdGVzdA_-x",
        "http://t.example.com:8080/u/abc?x=1%20y",
        "https://t.example.com/u/a&b=<c>",  # not a plain URL: converted on its own
        "https://t.example.com/u/a b",
        "",
    ],
)
@pytest.mark.parametrize(
    ("postal", "custom"),
    [
        ("1 Main St\nSpringfield", ""),
        ("", ""),
        (
            "PO Box 7",
            '<p>Sent by Acme. <a href="{{ unsubscribe_url }}">{{ unsubscribe_url }}</a><br>{{ postal_address }}</p>',
        ),
        ("", "<p>Leave: {{ unsubscribe_url }}</p>"),
    ],
)
def test_footer_text_is_what_converting_each_recipients_footer_gives(url: str, postal: str, custom: str) -> None:
    expected = html_to_text(
        append_compliance_footer("", unsubscribe_url=url, postal_address=postal, custom_html=custom)
    )
    assert footer_text(url, postal, custom) == expected
