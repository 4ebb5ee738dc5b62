"""The credential check `edm doctor` makes on an HTTP provider (docs/operations.md#edm-doctor): its cheapest call that
authenticates and sends nothing, over httpx.MockTransport. 2xx: the key works; 401/403: refused; no answer: not
reached; a provider without such a call: not checked."""

from __future__ import annotations

import httpx
import pytest

from edm.providers.brevo import BrevoAdapter
from edm.providers.postmark import PostmarkAdapter
from edm.providers.resend import ResendAdapter
from edm.providers.sendgrid import SendGridAdapter
from tests.unit.providers.support import Recorder, answer, config, raising

PROBES = [
    (SendGridAdapter, {"api_key": "SG.k"}, "/v3/scopes", "authorization", "Bearer SG.k"),
    (PostmarkAdapter, {"server_token": "pm-t"}, "/server", "x-postmark-server-token", "pm-t"),
    (BrevoAdapter, {"api_key": "xkeysib-k"}, "/v3/account", "api-key", "xkeysib-k"),
]


@pytest.mark.parametrize(("adapter_class", "credentials", "path", "header", "value"), PROBES)
async def test_a_read_call_with_the_key_tells_whether_it_works(
    adapter_class: type, credentials: dict[str, str], path: str, header: str, value: str
) -> None:
    for status, ok in ((200, True), (401, False), (403, False), (500, None)):
        recorder = Recorder(answer(status, {}))
        adapter = adapter_class(config(adapter_class.provider, credentials=credentials), transport=recorder.transport)
        result = await adapter.check_credentials()
        await adapter.aclose()
        assert result.ok is ok, (status, result)
        assert recorder.last.method == "GET" and recorder.last.url.path == path
        assert recorder.last.headers[header] == value
        assert value not in result.detail


async def test_an_unreachable_provider_and_a_missing_key_fail_and_a_provider_without_a_read_call_is_not_checked() -> (
    None
):
    recorder = Recorder(raising(httpx.ConnectError("refused")))
    adapter = SendGridAdapter(config("sendgrid", credentials={"api_key": "SG.k"}), transport=recorder.transport)
    unreachable = await adapter.check_credentials()
    assert unreachable.ok is False and "could not reach" in unreachable.detail
    missing = await PostmarkAdapter(config("postmark"), transport=recorder.transport).check_credentials()
    assert missing.ok is False and "server_token" in missing.detail
    resend = ResendAdapter(config("resend", credentials={"api_key": "re_k"}), transport=recorder.transport)
    assert (await resend.check_credentials()).ok is None
    assert len(recorder.requests) == 1  # only the first adapter asked anything
