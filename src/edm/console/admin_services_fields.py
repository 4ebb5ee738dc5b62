"""What the sending-service form asks per provider (docs/providers.md#the-providers): each provider's options and
credentials, described once here so that the template draws any provider's fields from this description (a new
provider needs an entry here, never a template change). Region choices and required credentials come from the
adapter classes of the provider registry (`regional_base_urls`, `required_credentials`).

Form field names: an option is `opt_<name>`, a credential `cred_<name>`. Credentials are write-only: the form
never shows them, an empty field keeps the stored value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edm.console.i18n import N_
from edm.providers.registry import ADAPTERS, PROVIDERS, SIMULATED_PROVIDERS

Kind = Literal["text", "int", "bool", "choice", "list"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str  # a msgid
    kind: Kind = "text"
    choices: tuple[str, ...] = ()  # for "choice": the values (the empty one means "the provider's default")
    required: bool = False
    hint: str = ""  # a msgid


@dataclass(frozen=True)
class ProviderForm:
    provider: str
    label: str  # a msgid or a product name
    options: tuple[FieldSpec, ...]
    credentials: tuple[FieldSpec, ...]


BASE_URL = FieldSpec("base_url", N_("API base URL"), hint=N_("Only to override the provider's address."))
API_KEY = FieldSpec("api_key", N_("API key"))


def _regions(provider: str) -> FieldSpec:
    regions = tuple(sorted(getattr(ADAPTERS[provider], "regional_base_urls", {}) or {}))
    return FieldSpec("region", N_("Region"), kind="choice", choices=("", *regions))


def _required(provider: str, fields: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
    """Mark the credentials the adapter cannot do without as required."""
    needed = set(getattr(ADAPTERS[provider], "required_credentials", ()) or ())
    return tuple(FieldSpec(f.name, f.label, f.kind, f.choices, True, f.hint) if f.name in needed else f for f in fields)


_FORMS: dict[str, tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]] = {
    "smtp": (
        (
            FieldSpec("host", N_("SMTP host"), required=True),
            FieldSpec("port", N_("Port"), kind="int", hint=N_("Empty: 465 for TLS, 587 for STARTTLS, 25 for none.")),
            FieldSpec("security", N_("Security"), kind="choice", choices=("starttls", "tls", "none")),
            FieldSpec("helo_name", N_("HELO name")),
            FieldSpec("validate_certs", N_("Check the server's certificate"), kind="bool"),
            FieldSpec("bounce_domain", N_("Bounce domain (VERP)")),
            FieldSpec("request_dsn", N_("Ask for delivery status notifications (DSN)"), kind="bool"),
        ),
        (FieldSpec("username", N_("Username")), FieldSpec("password", N_("Password"))),
    ),
    "engagelab": (
        (_regions("engagelab"), BASE_URL),
        (FieldSpec("api_user", N_("API user")), API_KEY),
    ),
    "sendgrid": ((_regions("sendgrid"), BASE_URL), (API_KEY,)),
    "mailgun": (
        (
            _regions("mailgun"),
            FieldSpec("domain", N_("Mailgun domain"), hint=N_("Empty: the service's domain.")),
            BASE_URL,
        ),
        (API_KEY,),
    ),
    "ses": (
        (
            FieldSpec("region", N_("Region"), required=True, hint=N_("e.g. eu-west-1")),
            FieldSpec("configuration_set", N_("Configuration set")),
            FieldSpec("sns_topic_arns", N_("SNS topic ARNs"), kind="list", hint=N_("One or more, comma-separated.")),
            BASE_URL,
        ),
        (
            FieldSpec("access_key_id", N_("Access key id")),
            FieldSpec("secret_access_key", N_("Secret access key")),
            FieldSpec("session_token", N_("Session token")),
        ),
    ),
    "postmark": (
        (FieldSpec("message_stream", N_("Message stream"), hint=N_("Empty: broadcast.")), BASE_URL),
        (FieldSpec("server_token", N_("Server token")),),
    ),
    "brevo": ((BASE_URL,), (API_KEY,)),
    "sparkpost": ((_regions("sparkpost"), FieldSpec("ip_pool", N_("IP pool")), BASE_URL), (API_KEY,)),
    "resend": ((BASE_URL,), (API_KEY,)),
    "fake": (
        (
            FieldSpec("latency_ms", N_("Latency (ms)"), kind="int"),
            FieldSpec("seed", N_("Random seed"), kind="int"),
            FieldSpec("idempotent", N_("Honours idempotency keys"), kind="bool"),
        ),
        (),
    ),
}
# A provider of the registry that is not described above still gets a form: its base URL and an API key.
_GENERIC = ((BASE_URL,), (API_KEY,))

LABELS = {
    "smtp": "SMTP",
    "engagelab": "EngageLab",
    "sendgrid": "SendGrid",
    "mailgun": "Mailgun",
    "ses": "Amazon SES",
    "postmark": "Postmark",
    "brevo": "Brevo",
    "sparkpost": "SparkPost",
    "resend": "Resend",
    "fake": N_("Simulated (fake)"),
}


TRANSLATED_LABELS = frozenset({"fake"})  # the others are product names, never translated


def provider_labels(gettext: Any) -> dict[str, str]:
    """Every provider's name as shown (the product name; a msgid translated with `gettext` for the others)."""
    return {p: gettext(text) if p in TRANSLATED_LABELS else text for p, text in LABELS.items()}


def provider_form(provider: str) -> ProviderForm:
    options, credentials = _FORMS.get(provider, _GENERIC)
    if provider in ADAPTERS:
        credentials = _required(provider, credentials)
    return ProviderForm(provider, LABELS.get(provider, provider), options, credentials)


def providers(*, fake_allowed: bool) -> list[ProviderForm]:
    """Every provider a service may be created with here, SMTP first."""
    names = sorted(p for p in PROVIDERS if fake_allowed or p not in SIMULATED_PROVIDERS)
    names.sort(key=lambda p: p != "smtp")
    return [provider_form(p) for p in names]


def option_values(spec: ProviderForm, stored: dict[str, Any]) -> dict[str, str]:
    """The stored options as the form's text values (`opt_<name>`)."""
    values: dict[str, str] = {}
    for f in spec.options:
        value = stored.get(f.name)
        if f.kind == "bool":
            default = f.name == "validate_certs"
            values[f"opt_{f.name}"] = "on" if (default if value is None else bool(value)) else ""
        elif f.kind == "list":
            values[f"opt_{f.name}"] = ", ".join(str(v) for v in value or ())
        else:
            values[f"opt_{f.name}"] = "" if value is None else str(value)
    return values


class OptionError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


NOT_A_WHOLE_NUMBER = N_("Enter a whole number.")
REQUIRED = N_("This field is required.")
NOT_A_CHOICE = N_("Choose one of the options.")


def read_options(spec: ProviderForm, values: dict[str, str], stored: dict[str, Any]) -> dict[str, Any]:
    """The options typed in the form, over the stored ones (options the form does not show are kept). An empty
    field removes its option (the provider's default applies). OptionError names the form field."""
    out = dict(stored)
    for f in spec.options:
        key = f"opt_{f.name}"
        text = values.get(key, "").strip()
        if f.kind == "bool":
            out[f.name] = bool(text)
            continue
        if not text:
            if f.required:
                raise OptionError(key, REQUIRED)
            out.pop(f.name, None)
            continue
        if f.kind == "int":
            try:
                out[f.name] = int(text)
            except ValueError:
                raise OptionError(key, NOT_A_WHOLE_NUMBER) from None
        elif f.kind == "choice":
            if text not in f.choices:
                raise OptionError(key, NOT_A_CHOICE)
            out[f.name] = text
        elif f.kind == "list":
            out[f.name] = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
        else:
            out[f.name] = text
    return out


def read_credentials(spec: ProviderForm, values: dict[str, str]) -> dict[str, str]:
    """The credentials typed (an empty field is left out: the stored value stays)."""
    return {f.name: values[f"cred_{f.name}"] for f in spec.credentials if values.get(f"cred_{f.name}", "")}
