"""`edm conversations list|show` and `edm inbound list|assign|discard` (docs/conversations.md#cli): thin callers, one
line and exit code 2 on bad input."""

from __future__ import annotations

import json

from tests.helpers import run_cli_async
from tests.integration.conversations.conftest import ConversationKit


async def test_conversations_and_inbound_from_the_command_line(ckit: ConversationKit, db_url: str) -> None:
    stored = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    unrouted = await ckit.receive(ckit.mime("unknown_address.eml"))
    other = await ckit.receive(ckit.mime("unknown_address.eml", **{"proposal-778": "proposal-779"}))

    listed = await run_cli_async(db_url, "conversations", "list", "--user", "alice")
    assert listed.returncode == 0, listed.stderr
    assert ckit.their_address() in listed.stdout and "Spring campaign" in listed.stdout
    as_json = await run_cli_async(db_url, "conversations", "list", "--user", "alice", "--unread", "--json")
    assert [c["id"] for c in json.loads(as_json.stdout)] == [stored.conversation_id]
    shown = await run_cli_async(db_url, "conversations", "show", str(stored.conversation_id), "--user", "alice")
    assert shown.returncode == 0 and "café tables" in shown.stdout and "inbound" in shown.stdout

    bad = await run_cli_async(db_url, "conversations", "list", "--user", "alice", "--status", "open")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:")
    missing = await run_cli_async(db_url, "conversations", "show", "999999", "--user", "alice")
    assert missing.returncode == 2 and "not found" in missing.stderr

    inbound = await run_cli_async(db_url, "inbound", "list")
    assert inbound.returncode == 0 and "stranger@example.org" in inbound.stdout and "unknown_sender" in inbound.stdout
    assigned = await run_cli_async(db_url, "inbound", "assign", str(unrouted.unrouted_id), "--user", "alice", "--json")
    assert assigned.returncode == 0, assigned.stderr
    assert json.loads(assigned.stdout)["status"] == "stored"
    again = await run_cli_async(db_url, "inbound", "assign", str(unrouted.unrouted_id), "--user", "alice")
    assert again.returncode == 2 and "already assigned" in again.stderr
    discarded = await run_cli_async(db_url, "inbound", "discard", str(other.unrouted_id))
    assert discarded.returncode == 0 and f"discarded inbound mail {other.unrouted_id}" in discarded.stdout
    assert (await run_cli_async(db_url, "inbound", "list")).stdout.strip() == "no unrouted mail"
    everything = json.loads((await run_cli_async(db_url, "inbound", "list", "--all", "--json")).stdout)
    assert sorted(r["resolution"] for r in everything) == ["assigned", "discarded"]
