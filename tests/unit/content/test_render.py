from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from edm.content import render
from edm.content.render import (
    CompiledTemplate,
    RenderedContent,
    RenderError,
    RenderLimitExceeded,
    append_compliance_footer,
    build_context,
    compile_template,
    html_to_text,
    insert_preheader,
)
from edm.errors import TemplateSyntaxError

NOW = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)
UNSUB = "https://edm.example.com/u/TOKEN123"


def _ctx(**contact: Any) -> dict[str, Any]:
    person = {"email": "ann@example.org", "name": "Ann Lee", "first_name": "Ann", **contact}
    return build_context(
        contact=person,
        sender={"display_name": "Shop", "email": "news@mail.example.com"},
        task={"name": "Spring", "scheduled_at": NOW},
        org={"name": "Example Ltd", "postal_address": "1 Main St\nSpringfield"},
        unsubscribe_url=UNSUB,
        now=NOW,
    )


def _render(html: str, *, subject: str = "Hi", text: str | None = None, **contact: Any) -> RenderedContent:
    """Render without the compliance footer, so assertions see exactly what the template produced."""
    tpl = compile_template(subject=subject, html=html, text=text)
    return tpl.render(_ctx(**contact), compliance_footer=False)


# ---------------------------------------------------------------- variables and undefined


def test_variables_and_aliases() -> None:
    tpl = compile_template(
        subject="Hello {{ contact.first_name }}",
        html=(
            "{{ name }}|{{ email }}|{{ contact.company }}|{{ contact.attributes.plan }}"
            "|{{ contact.tags|join(',') }}|{{ sender.display_name }}|{{ sender.email }}|{{ task.name }}"
            "|{{ org.name }}|{{ unsubscribe_url }}|{{ now.year }}"
        ),
    )
    out = tpl.render(_ctx(company="ACME", attributes={"plan": "pro"}, tags=["vip", "eu"]))
    assert out.subject == "Hello Ann"
    assert out.html == (
        f"Ann Lee|ann@example.org|ACME|pro|vip,eu|Shop|news@mail.example.com|Spring|Example Ltd|{UNSUB}|2024"
    )


def test_context_exposes_only_documented_contact_fields() -> None:
    ctx = _ctx(id=5, user_id=9, notes="internal")
    assert set(ctx["contact"]) == set(render.CONTACT_FIELDS) | {"attributes", "tags"}
    assert _render("[{{ contact.notes }}{{ contact.user_id }}]", id=5, notes="x").html == "[]"


@pytest.mark.parametrize(
    "source",
    ["{{ missing }}", "{{ contact.foo }}", "{{ contact.foo.bar }}", "{{ contact.attributes.nope.deeper }}",
     "{{ missing['a'].b }}", "{{ contact.phone }}", "{% for x in missing %}{{ x }}{% endfor %}"],
)  # fmt: skip
def test_undefined_and_none_render_empty(source: str) -> None:
    assert _render(f"[{source}]").html == "[]"


def test_default_filter_with_boolean() -> None:
    html = "{{ contact.first_name | default('there', true) }} {{ contact.nick | default('pal', true) }}"
    assert _render(html, first_name="").html == "there pal"
    assert _render(html, first_name=None).html == "there pal"
    assert _render("{{ contact.foo.bar | default('x', true) }}").html == "x"


def test_attribute_keys_win_over_dict_methods() -> None:
    assert _render("{{ contact.attributes.items }}", attributes={"items": "3 items"}).html == "3 items"


def test_autoescape_html_only() -> None:
    tpl = compile_template(subject="{{ name }}", html="<p>{{ name }}</p>", text="{{ name }}", preheader="{{ name }}")
    out = tpl.render(_ctx(name="<b>Tom & Jerry</b>"))
    assert out.subject == "<b>Tom & Jerry</b>"
    assert "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>" in out.html
    assert out.text.startswith("<b>Tom & Jerry</b>")
    assert out.preheader == "<b>Tom & Jerry</b>"


def test_subject_is_one_clean_line() -> None:
    out = _render("x", subject="  Hi {{ name }}\r\nBcc: evil@example.com\n ", name="Ann\r\nX-Evil: 1")
    assert "\r" not in out.subject and "\n" not in out.subject
    assert out.subject == "Hi Ann X-Evil: 1 Bcc: evil@example.com"


def test_empty_subject_is_render_error() -> None:
    with pytest.raises(RenderError) as err:
        _render("x", subject="{{ contact.nickname }}  ")
    assert err.value.code == "render_error" and err.value.part == "subject"


# ---------------------------------------------------------------- sandbox and limits


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ contact.__class__ }}",
        "{{ ''['__class__'] }}",
        "{{ contact.tags.append('x') }}",
        "{{ contact.attributes.update({'a': 1}) }}",
        "{{ range.__globals__ }}",
    ],
)
def test_sandbox_blocks_internals(source: str) -> None:
    with pytest.raises(RenderError) as err:
        _render(source, tags=["a"], attributes={})
    assert err.value.code == "render_error" and err.value.part == "html"
    assert "SecurityError" in err.value.message


def test_runtime_error_is_render_error() -> None:
    with pytest.raises(RenderError, match="ZeroDivisionError") as err:
        _render("{{ 1 / 0 }}")
    assert not isinstance(err.value, RenderLimitExceeded), "an ordinary error is not a limit"


def test_endless_recursion_hits_the_depth_limit() -> None:
    with pytest.raises(RenderLimitExceeded, match="nest deeper than 50 levels") as err:
        _render("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}")
    assert err.value.limit == "depth" and err.value.code == "render_error"


def test_output_size_limit() -> None:
    with pytest.raises(RenderLimitExceeded, match="html: output exceeds 2 MB") as err:
        _render("{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}")
    assert err.value.limit == "size"
    assert len(_render("{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}").html) == 1_000_000


def test_size_limit_counts_utf8_bytes() -> None:
    with pytest.raises(RenderError, match="exceeds"):
        _render("{% for i in range(800) %}{{ '中' * 1000 }}{% endfor %}")  # 2.4 MB in UTF-8


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 1000000000 }}",
        "{{ ['x'] * 1000000000 }}",
        "{{ 2 ** 1000000 }}",
        "{{ '%999999999s' % 1 }}",
        "{{ '%*s' % (999999999, 1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:{}}'.format(1, 999999999) }}",
        "{{ 'x'|center(999999999) }}",
        "{{ 'x'.ljust(999999999) }}",
        "{{ ('x' * 2000000)|replace('x', 'yy') }}",
        "{% set ns = namespace(s='x' * 1500000) %}{% set ns.s = ns.s ~ ns.s %}",
    ],
)
def test_allocation_bombs_refused_before_they_run(source: str) -> None:
    with pytest.raises(RenderLimitExceeded, match="would exceed|too large") as err:
        _render(source)
    assert err.value.limit == "size"


def test_ordinary_formatting_still_works() -> None:
    html = "{{ '%05d'|format(42) }} {{ '{:,}'.format(12345678) }} {{ '%d' % 12345678 }} {{ 'ab'|center(6) }}|"
    assert _render(html).html == "00042 12,345,678 12345678   ab  |"


def test_time_limit_on_silent_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "RENDER_TIME_LIMIT", 0.05)
    # No output and no calls: only the loop guard can stop this.
    with pytest.raises(RenderLimitExceeded, match="html: rendering took longer than 0.05 s") as err:
        _render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    assert err.value.limit == "time"


def test_time_limit_on_loop_using_loop_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "RENDER_TIME_LIMIT", 0.05)
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{{ loop.index0 * 0 }}{% endfor %}{% endfor %}"
    with pytest.raises(RenderError, match="longer than|exceeds"):
        _render(source)


def test_loops_behave_normally_under_the_guard() -> None:
    html = (
        "{% for x in contact.tags %}{{ loop.index }}/{{ loop.length }}:{{ x }}"
        "{% if not loop.last %},{% endif %}{% else %}none{% endfor %}"
        "|{% for x in [] %}a{% else %}empty{% endfor %}"
        "|{% for k, v in contact.attributes|dictsort %}{{ k }}={{ v }}{% endfor %}"
        "|{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{% endfor %}"
    )
    out = _render(html, tags=["a", "b"], attributes={"z": 1, "a": 2})
    assert out.html == "1/2:a,2/2:b|empty|a=2z=1|24"


def test_guard_name_is_reserved() -> None:
    with pytest.raises(TemplateSyntaxError):
        compile_template(subject="s", html="{% set __edm_guard_iter = range %}{% for i in [1] %}{% endfor %}")


# ---------------------------------------------------------------- syntax errors and compilation


def test_syntax_error_names_part_and_line() -> None:
    with pytest.raises(TemplateSyntaxError) as err:
        compile_template(subject="ok", html="<p>one</p>\n<p>two</p>\n{% if %}\n")
    assert err.value.code == "template_syntax_error" and err.value.status == 422
    assert err.value.details == [
        {"field": "html", "message": err.value.details[0]["message"], "line": 3, "column": None}
    ]
    assert "html" in err.value.message and "line 3" in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "part", "line"),
    [
        ({"subject": "{{ x", "html": "ok"}, "subject", 1),
        ({"subject": "ok", "html": "ok", "text": "a\nb\n{% endfor %}"}, "text", 3),
        ({"subject": "ok", "html": "ok", "preheader": "\n{{ x | nosuchfilter }}"}, "preheader", 2),
        ({"subject": "ok", "html": "a\n{% for x in y %}\n\nunclosed"}, "html", 2),  # where the block opens
    ],
)
def test_syntax_error_in_each_part(kwargs: dict[str, str], part: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxError) as err:
        compile_template(**kwargs)
    assert err.value.details[0]["field"] == part
    assert err.value.details[0]["line"] == line


def test_compiled_once_and_reused() -> None:
    a = compile_template(subject="Hi {{ name }}", html="<p>{{ name }}</p>")
    b = compile_template(subject="Hi {{ name }}", html="<p>{{ name }}</p>")
    assert a is b
    assert isinstance(a, CompiledTemplate)
    assert a.render(_ctx(name="A")).subject == "Hi A"
    assert a.render(_ctx(name="B")).subject == "Hi B"


def test_variables_listed() -> None:
    tpl = compile_template(subject="{{ name }}", html="{% set y = 1 %}{{ contact.x }}{{ y }}{{ mystery }}")
    assert tpl.variables == {"name", "contact", "mystery"}


# ---------------------------------------------------------------- pipeline


def test_preheader_is_hidden_at_top_of_body() -> None:
    tpl = compile_template(
        subject="s", html='<html><body class="x"><p>Body</p></body></html>', preheader="Sale {{ name }} &"
    )
    out = tpl.render(_ctx())
    assert out.preheader == "Sale Ann Lee &"
    after_body = out.html.split('<body class="x">', 1)[1]
    assert after_body.startswith('<div style="display:none;')
    assert "Sale Ann Lee &amp;" in after_body.split("</div>", 1)[0]
    assert "Sale" not in out.text  # hidden text stays out of the text part


def test_insert_preheader_without_body_and_empty() -> None:
    assert insert_preheader("<p>x</p>", "") == "<p>x</p>"
    assert insert_preheader("<p>x</p>", "Hi").startswith('<div style="display:none;')
    assert insert_preheader("<BODY>x</BODY>", "<Hi>").startswith("<BODY><div")
    assert "&lt;Hi&gt;" in insert_preheader("<BODY>x</BODY>", "<Hi>")


def test_footer_appended_when_template_lacks_unsubscribe() -> None:
    tpl = compile_template(subject="s", html="<html><body><p>Hi</p></body></html>")
    assert not tpl.uses_unsubscribe_url
    out = tpl.render(_ctx())
    footer = out.html.split("<p>Hi</p>", 1)[1]
    assert f'<a href="{UNSUB}" data-edm-notrack>Unsubscribe</a>' in footer
    assert "1 Main St<br>Springfield" in footer
    assert footer.endswith("</div></body></html>")
    assert f"Unsubscribe ({UNSUB})" in out.text and "Springfield" in out.text


def test_no_footer_when_template_uses_unsubscribe() -> None:
    tpl = compile_template(subject="s", html='<p><a href="{{ unsubscribe_url }}">Leave</a></p>')
    assert tpl.uses_unsubscribe_url
    out = tpl.render(_ctx())
    assert out.html == f'<p><a href="{UNSUB}">Leave</a></p>'


def test_footer_can_be_switched_off_for_preview_callers() -> None:
    out = compile_template(subject="s", html="<p>x</p>").render(_ctx(), compliance_footer=False)
    assert out.html == "<p>x</p>"


def test_handwritten_text_part_gets_its_own_footer() -> None:
    tpl = compile_template(subject="s", html="<p>x</p>", text="Hello {{ name }}")
    out = tpl.render(_ctx())
    assert out.text.startswith("Hello Ann Lee\n\n--\n")
    assert f"Unsubscribe: {UNSUB}" in out.text
    with_link = compile_template(subject="s", html="<p>x</p>", text="Bye {{ unsubscribe_url }}")
    assert with_link.render(_ctx()).text == f"Bye {UNSUB}"


def test_append_compliance_footer_escapes() -> None:
    html = append_compliance_footer("<p>x</p>", unsubscribe_url='https://u/"x"', postal_address="<Main>")
    assert 'href="https://u/&quot;x&quot;"' in html and "&lt;Main&gt;" in html


def test_text_generated_from_final_html_when_empty() -> None:
    tpl = compile_template(subject="s", html="<h1>Title</h1><p>Para</p>", text="  {{ nothing }} ")
    out = tpl.render(_ctx(), compliance_footer=False)
    assert out.text == "Title\n\nPara\n"


def test_postprocess_hook_rewrites_the_derived_text_after_the_html() -> None:
    calls: list[str] = []

    def rewrite(part: str, value: str) -> str:
        calls.append(part)
        return value.replace("https://shop.example.com", "https://t.example.com/c/TOK")

    tpl = compile_template(subject="s", html='<p><a href="https://shop.example.com">Shop</a></p>')
    assert tpl.derived_text is not None
    out = tpl.render(_ctx(), compliance_footer=False, postprocess=rewrite)
    assert calls == ["html", "text"]
    assert 'href="https://t.example.com/c/TOK"' in out.html
    assert out.text == "Shop (https://t.example.com/c/TOK)\n"


def test_postprocess_hook_runs_before_text_conversion_when_text_cannot_be_derived() -> None:
    calls: list[str] = []

    def rewrite(part: str, value: str) -> str:
        calls.append(part)
        return value.replace("https://shop.example.com", "https://t.example.com/c/TOK")

    # `| safe` markup is only visible after rendering: the text is converted from the final HTML.
    tpl = compile_template(subject="s", html="<p>{{ contact.attributes.block | safe }}</p>")
    assert tpl.derived_text is None
    block = {"block": '<a href="https://shop.example.com">Shop</a>'}
    out = tpl.render(_ctx(attributes=block), compliance_footer=False, postprocess=rewrite)
    assert calls == ["html"]
    assert out.text == "Shop (https://t.example.com/c/TOK)\n"


# ---------------------------------------------------------------- html_to_text


def test_html_to_text_shapes() -> None:
    html = """<!doctype html><html><head><title>T</title><style>p{color:red}</style></head>
    <body>
      <script>alert(1)</script>
      <h1>Big   Sale</h1>
      <p>Hello&nbsp;<b>Ann</b>,
         welcome &amp; enjoy.</p>
      <p>Line one<br>Line two</p>
      <ul><li>First</li><li>Second <a href="https://ex.com/2">link</a></li></ul>
      <ol><li>one</li><li>two</li></ol>
      <p><a href="https://ex.com/shop?a=1&amp;b=2">Shop now</a> or
         <a href="mailto:help@ex.com">help@ex.com</a> or <a href="#top">top</a>
         or <a href="https://ex.com">https://ex.com</a></p>
      <div style="display: none">hidden text</div>
      <table><tr><td>A</td><td>B</td></tr><tr><td>C</td><td>D</td></tr></table>
      <h2>Sub</h2><p>End &lt;3</p>
    </body></html>"""
    assert html_to_text(html) == (
        "Big Sale\n\n"
        "Hello Ann, welcome & enjoy.\n\n"
        "Line one\nLine two\n\n"
        "- First\n- Second link (https://ex.com/2)\n\n"
        "1. one\n2. two\n\n"
        "Shop now (https://ex.com/shop?a=1&b=2) or help@ex.com or top or https://ex.com\n\n"
        "A B\nC D\n\n"
        "Sub\n\n"
        "End <3\n"
    )


def test_html_to_text_nested_lists_and_images() -> None:
    html = '<ul><li>a<ul><li>b</li></ul></li></ul><p><a href="https://x.com"><img alt="Logo"></a></p>'
    assert html_to_text(html) == "- a\n  - b\n\nLogo (https://x.com)\n"


def test_html_to_text_link_without_text_shows_url() -> None:
    assert html_to_text('<a href="https://x.com/p"><img src="p.png"></a>') == "https://x.com/p\n"


def test_html_to_text_pre_keeps_whitespace() -> None:
    assert html_to_text("<p>a   b</p><pre>x  y\n  z</pre>") == "a b\n\nx  y\n  z\n"


def test_html_to_text_empty() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<style>x</style>") == ""


# ---------------------------------------------- CSS inlining and the custom footer (docs/templates.md#the-pipeline)

STYLED = (
    "<html><head><style>p.lead { color: #123456 } a { color: red }"
    " @media (max-width: 600px) { p.lead { font-size: 20px } }</style></head>"
    '<body><p class="lead">Hi {{ contact.first_name }}</p><a href="https://x.example.com/">x</a></body></html>'
)


def test_css_is_inlined_only_when_the_template_asks() -> None:
    inlined = compile_template(subject="s", html=STYLED, inline_css=True).render(_ctx(), compliance_footer=False)
    assert '<p class="lead" style="color: #123456;">Hi Ann</p>' in inlined.html
    assert '<a href="https://x.example.com/" style="color: red;">' in inlined.html
    assert "@media (max-width: 600px)" in inlined.html and "p.lead { color" not in inlined.html
    kept = compile_template(subject="s", html=STYLED, inline_css=False).render(_ctx(), compliance_footer=False)
    assert "p.lead { color: #123456 }" in kept.html and 'style="color' not in kept.html


def test_html_without_a_style_element_is_left_exactly_as_rendered() -> None:
    source = '<p class="lead">Hi {{ contact.first_name }} &amp; co</p>'
    compiled = compile_template(subject="s", html=source, inline_css=True)
    assert not compiled.inline_css, "nothing to inline: the inliner is not run at all"
    assert compiled.render(_ctx(), compliance_footer=False).html == '<p class="lead">Hi Ann &amp; co</p>'
    assert render.inline_styles("<p>x</p>") == "<p>x</p>"


def test_inlining_runs_after_the_footer_and_before_link_rewriting() -> None:
    seen: list[str] = []

    def rewrite(part: str, value: str) -> str:
        seen.append(value)
        return value

    out = compile_template(subject="s", html=STYLED.replace("<a ", '<a class="x" '), inline_css=True).render(
        _ctx(), postprocess=rewrite
    )
    assert 'style="color: red;"' in seen[0], "the rewriter sees inlined HTML"
    assert "Springfield" in out.html and 'class="edm-footer"' in out.html


def test_custom_footer_fills_its_placeholders_escaped() -> None:
    custom = '<p class="legal"><a href="{{ unsubscribe_url }}">Leave</a> {{ postal_address }}</p>'
    out = compile_template(subject="s", html="<html><body><p>Hi</p></body></html>").render(
        build_context(
            contact={"email": "a@b.example"},
            sender={},
            task={},
            unsubscribe_url=UNSUB + "&x=<1>",
            org={"postal_address": "1 <Main> St\nTown"},
            now=NOW,
        ),
        footer_html=custom,
    )
    assert (
        '<p class="legal"><a href="https://edm.example.com/u/TOKEN123&amp;x=&lt;1&gt;">Leave</a> '
        "1 &lt;Main&gt; St<br>Town</p></body>" in out.html
    )
    assert "edm-footer" not in out.html
    assert "Leave (https://edm.example.com/u/TOKEN123&x=<1>)" in out.text
