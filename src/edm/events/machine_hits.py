"""Telling a machine's tracking hit from a person's: link scanners, preview fetchers and privacy proxies open
and click too. A machine hit is counted apart and never as engagement; the reason is kept on the event."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.events.matching import TRACKING_SOURCES
from edm.models.events import Event
from edm.system.runtime_settings import RuntimeSettings
from edm.vocabulary.events import EventType

log = logging.getLogger("edm.events")

# Clients that fetch images without a person: link scanners, preview fetchers, HTTP libraries. Webmail image
# proxies (GoogleImageProxy, YahooMailProxy) fetch on a real open and stay human. Admins add their own
# substrings with `tracking.bot_user_agents`.
_MACHINE_AGENTS = re.compile(
    r"bot\b|crawler|spider|scanner|preview|headless|python-|curl/|wget/|go-http-client|java/|okhttp|"
    r"barracuda|proofpoint|mimecast|symantec|forcepoint|safelinks|urldefense|msnbot|bingpreview",
    re.IGNORECASE,
)
# The windows are admin settings (`tracking.machine_open_window`, `tracking.machine_click_window`,
# `tracking.click_burst_window`, in seconds); these are their defaults, kept for readers. 0 turns a rule off.
MACHINE_OPEN_WINDOW = dt.timedelta(seconds=60)
MACHINE_CLICK_WINDOW = dt.timedelta(seconds=10)
CLICK_BURST_WINDOW = dt.timedelta(seconds=2)
# A tracking hit keeps only its network (edm.api.tracking.truncated_ip): the prefix the stored address stands for.
_STORED_PREFIX = {4: 24, 6: 48}


def machine_reason(event: Any, subtask: Any, runtime: RuntimeSettings) -> str | None:
    """Why a tracking hit is a machine's, or None for a person. The rules are tried in this order and
    the first that holds names the reason:

    - `empty_user_agent`: no user agent at all;
    - `bot_user_agent`: a built-in scanner/bot/HTTP-library agent, or one containing an admin substring
      (`tracking.bot_user_agents`, case-insensitive);
    - `privacy_proxy`: the stored network of the hit (/24, /48) lies in or overlaps an admin CIDR
      (`tracking.proxy_cidrs`);
    - `too_soon_after_send`: an open within `tracking.machine_open_window`, a click within
      `tracking.machine_click_window` seconds of `sent_at`;
    - `link_burst`: a click when an earlier-recorded click (lower event id) of the same SubTask on a different
      link lies within `tracking.click_burst_window` seconds of it. The comparison clicks are attached to the
      SubTask record by `load_recent_clicks` (`recent_clicks`).
    """
    details = event.details or {}
    agent = (details.get("user_agent") or "").strip()
    if not agent:
        return "empty_user_agent"
    if _MACHINE_AGENTS.search(agent) or _has_custom_agent(agent, runtime.tracking_bot_user_agents):
        return "bot_user_agent"
    if _in_proxy_networks(details.get("ip"), runtime.tracking_proxy_cidrs):
        return "privacy_proxy"
    if _too_soon_after_send(event, subtask, runtime):
        return "too_soon_after_send"
    if event.event_type == EventType.CLICKED and _in_link_burst(event, subtask, runtime.tracking_click_burst_window):
        return "link_burst"
    return None


def _has_custom_agent(agent: str, substrings: tuple[str, ...]) -> bool:
    lowered = agent.lower()
    return any(item and item.lower() in lowered for item in substrings)


def _in_proxy_networks(stored_ip: Any, cidrs: tuple[str, ...]) -> bool:
    """Whether the hit's stored network overlaps a listed one. The hit keeps only its /24 (/48), so an entry
    narrower than that matches the whole /24 (/48) it lies in: that is all that can be known of the hit."""
    if not stored_ip or not cidrs:
        return False
    try:
        address = ipaddress.ip_address(str(stored_ip))
        hit = ipaddress.ip_network(f"{address}/{_STORED_PREFIX[address.version]}", strict=False)
    except ValueError:
        return False
    return any(hit.version == network.version and hit.overlaps(network) for network in _networks(cidrs))


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The parsed list, once per distinct setting value (every batch hands in the same tuple)."""
    parsed = []
    for cidr in cidrs:
        try:
            parsed.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:  # `coerce` refuses these; a hand-edited row must not stop the events job
            log.warning("tracking.bad_proxy_cidr", extra={"cidr": cidr})
    return tuple(parsed)


def _too_soon_after_send(event: Any, subtask: Any, runtime: RuntimeSettings) -> bool:
    opened = event.event_type == EventType.OPENED
    seconds = runtime.tracking_machine_open_window if opened else runtime.tracking_machine_click_window
    sent_at = getattr(subtask, "sent_at", None)
    return seconds > 0 and sent_at is not None and event.occurred_at - sent_at < dt.timedelta(seconds=seconds)


def _in_link_burst(event: Any, subtask: Any, window_seconds: float) -> bool:
    """A different link of the same SubTask clicked within the window, by a click recorded before this one.

    The first click of a burst stays human: it was counted before the second link was clicked, and counts
    never move. Every later click inside the window, on any link (a repeat of the first one too), is machine."""
    if window_seconds <= 0:
        return False
    window = dt.timedelta(seconds=window_seconds)
    link = _link_of(event.details)
    return any(
        other_id < event.id and other_link != link and abs(other_at - event.occurred_at) <= window
        for other_id, other_at, other_link in getattr(subtask, "recent_clicks", ())
    )


def _link_of(details: Any) -> str | None:
    link = (details or {}).get("link_id")
    return None if link is None else str(link)


async def load_recent_clicks(
    session: AsyncSession, events: Sequence[Any], subtasks: dict[int, Any], window_seconds: float
) -> None:
    """Attach to every SubTask clicked in this batch (`recent_clicks`: event id, time, link) the tracking clicks
    the burst rule compares with: this batch's own, those already applied (by SubTask id), and those another
    worker holds right now (still pending, with a lower id than this batch's last: found by SubTask ref)."""
    clicks = [
        e for e in events if e.id in subtasks and e.event_type == EventType.CLICKED and e.source in TRACKING_SOURCES
    ]
    clicked = {subtasks[e.id].id: subtasks[e.id] for e in clicks}
    for record in clicked.values():
        record.recent_clicks = []
    if not clicks or window_seconds <= 0:
        return
    window = dt.timedelta(seconds=window_seconds)
    batch_ids = {e.id for e in events}
    by_ref = {str(record.public_id): record for record in clicked.values()}
    nearby = select(Event.id, Event.occurred_at, Event.details, Event.subtask_id, Event.subtask_ref).where(
        Event.source.in_(TRACKING_SOURCES),
        Event.event_type == EventType.CLICKED,
        Event.occurred_at >= min(e.occurred_at for e in clicks) - window,
        Event.occurred_at <= max(e.occurred_at for e in clicks) + window,
    )
    applied = nearby.where(Event.subtask_id.in_(list(clicked)))
    held = nearby.where(Event.processed_at.is_(None), Event.id < max(batch_ids), Event.subtask_ref.in_(list(by_ref)))
    for query in (applied, held):
        for row in await session.execute(query):
            record = clicked.get(row.subtask_id) if row.subtask_id is not None else by_ref.get(row.subtask_ref)
            if record is not None and row.id not in batch_ids:
                record.recent_clicks.append((row.id, row.occurred_at, _link_of(row.details)))
    for event in clicks:
        subtasks[event.id].recent_clicks.append((event.id, event.occurred_at, _link_of(event.details)))
