"""Conversations (docs/conversations.md): inbound mail parsed, classified, threaded to the send that caused it and
stored once; answers queued as outbound mail; the inbox reads, status changes and the admins' unrouted mail."""
