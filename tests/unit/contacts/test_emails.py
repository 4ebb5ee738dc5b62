"""Address syntax and normalization: what is accepted, how it is stored, and what is refused with which field."""

from __future__ import annotations

import pytest

from edm.addresses import Email, is_valid_email, normalize_email
from edm.errors import BadInput


@pytest.mark.parametrize(
    ("given", "normalized", "domain"),
    [
        ("ann@example.com", "ann@example.com", "example.com"),
        ("  Ann.Lee@Example.COM \n", "ann.lee@example.com", "example.com"),
        ("o'brien+news@mail.example.org", "o'brien+news@mail.example.org", "mail.example.org"),
        ("x@example.com.", "x@example.com", "example.com"),  # the root's trailing dot
        ("ann@bücher.example", "ann@xn--bcher-kva.example", "xn--bcher-kva.example"),  # IDNA, no Unicode stored
        ("a@b-c.d-e.example", "a@b-c.d-e.example", "b-c.d-e.example"),
        ("{x}|~!#$%&*=?^_`@example.com", "{x}|~!#$%&*=?^_`@example.com", "example.com"),
        (f"{'l' * 64}@example.com", f"{'l' * 64}@example.com", "example.com"),
    ],
)
def test_accepted_addresses_and_their_normal_form(given: str, normalized: str, domain: str) -> None:
    assert normalize_email(given) == Email(given.strip(), normalized, domain)
    assert is_valid_email(given)


@pytest.mark.parametrize(
    "given",
    [
        "",
        "   ",
        "plain",
        "@example.com",
        "a@b@example.com",
        ".ann@example.com",
        "ann.@example.com",
        "an..n@example.com",  # dots only between characters
        f"{'l' * 65}@example.com",  # local part over 64
        "a n@example.com",
        "(ann)@example.com",
        '"ann"@example.com',
        "ann\x00@example.com",
    ],
)
def test_refused_local_parts_and_shapes(given: str) -> None:
    with pytest.raises(BadInput) as refused:
        normalize_email(given)
    assert "is not a valid email address" in refused.value.message
    assert not is_valid_email(given)


@pytest.mark.parametrize(
    "given",
    [
        "ann@",
        "ann@localhost",  # no domain; one label
        "ann@-example.com",
        "ann@example-.com",  # a label never starts or ends with a hyphen
        f"ann@{'d' * 64}.com",  # a label over 63
        f"ann@{'.'.join(['d' * 63] * 4)}.com",  # over 253 in all
        "ann@exa_mple.com",
        "ann@example..com",
        "ann@.example.com",
        "ann@\udcff.com",  # not encodable
    ],
)
def test_refused_domains(given: str) -> None:
    with pytest.raises(BadInput) as refused:
        normalize_email(given)
    assert "has an invalid domain" in refused.value.message
    assert not is_valid_email(given)


def test_the_error_names_the_field_it_was_given() -> None:
    with pytest.raises(BadInput) as refused:
        normalize_email("nope", field="to")
    assert refused.value.details == [{"field": "to", "message": "'nope' is not a valid email address"}]
    assert refused.value.message.startswith("to: ")


def test_the_longest_domain_allowed() -> None:
    domain = ".".join(["d" * 63] * 3 + ["e" * 61])  # 253 characters
    assert len(domain) == 253
    assert normalize_email(f"a@{domain}").domain == domain
