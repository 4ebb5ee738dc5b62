"""The records behind the API's `Idempotency-Key` header: claiming a key for a request, storing its answer,
finding the answer to replay; records past their 24 hours are never replayed, and the worker's hourly
`idempotency` job deletes them (edm.operations.retention).

A record `(user_id, key)` is claimed before the request runs and filled with the answer after it, each in a
short transaction of its own, apart from the request's: a concurrent request with the same key must see the
claim while the first one is still running, and the unique constraint decides who wins a race. This is why
these functions take the sessionmaker and commit, unlike the services that run inside a request's unit of work.
Answers are stored encrypted when a vault is configured: they may carry personal data, and `POST /me/tokens`
answers a token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.models.system import IdempotencyRecord
from edm.security.crypto import Vault

RETENTION = dt.timedelta(hours=24)
CLAIM_ATTEMPTS = 3  # a record may vanish between the failed insert and the lookup (purged, released): retry


@dataclass(frozen=True)
class Stored:
    status: int
    content_type: str | None
    body: str


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: `record_id` to fill (a new request), or `replay`, or an error
    (status, code, message)."""

    record_id: int | None = None
    replay: Stored | None = None
    error: tuple[int, str, str] | None = None


KEY_REUSED = (422, "idempotency_key_reused", "this Idempotency-Key was used with another request; use a new key")
IN_PROGRESS = (409, "idempotency_in_progress", "a request with this Idempotency-Key is still running; retry later")
CONTENDED = (409, "idempotency_in_progress", "a request with this Idempotency-Key is contended")


async def claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    user_id: int,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    vault: Vault | None = None,
) -> Claim:
    """Take `(user_id, key)` for this request, or say what the earlier request with that key decides:
    same hash and answered → replay; same hash still running → 409; another hash → 422; a record older
    than RETENTION is forgotten and the key taken anew."""
    for _ in range(CLAIM_ATTEMPTS):
        now = clock.utc_now()
        try:
            async with unit_of_work(sessionmaker) as session:
                record = IdempotencyRecord(
                    user_id=user_id, key=key, method=method, path=path[:500], request_hash=request_hash, created_at=now
                )
                session.add(record)
                await session.flush()
                return Claim(record_id=record.id)
        except IntegrityError:
            pass
        async with unit_of_work(sessionmaker) as session:
            found = await _find(session, user_id, key)
            if found is None:
                continue  # deleted meanwhile (a 5xx answer or the purge): try to take it again
            if found.created_at <= now - RETENTION:
                await _delete(session, found.id)
                continue
            if found.request_hash != request_hash:
                return Claim(error=KEY_REUSED)
            if found.status_code is None:
                return Claim(error=IN_PROGRESS)
            try:
                body = _open(vault, found.response_body)
            except ValueError:  # sealed with a key no longer configured: the answer is lost, run again
                await _delete(session, found.id)
                continue
            return Claim(replay=Stored(found.status_code, found.content_type, body))
    return Claim(error=CONTENDED)


async def finish(
    sessionmaker: async_sessionmaker[AsyncSession],
    record_id: int,
    *,
    status: int,
    content_type: str | None,
    body: bytes | None,
    vault: Vault | None = None,
) -> None:
    """Store the answer (`body` None: not storable → forget the key so a retry runs again)."""
    async with unit_of_work(sessionmaker) as session:
        if body is None:
            await _delete(session, record_id)
            return
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id)
            .values(
                status_code=status,
                content_type=(content_type or "")[:100] or None,
                response_body=_seal(vault, body.decode()),
            )
        )


async def _find(session: AsyncSession, user_id: int, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
    return (await session.execute(query)).scalar_one_or_none()


async def _delete(session: AsyncSession, record_id: int) -> None:
    await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))


def _seal(vault: Vault | None, body: str) -> str:
    return vault.encrypt_json({"body": body}) if vault is not None else body


def _open(vault: Vault | None, stored: str | None) -> str:
    if vault is None or not stored:
        return stored or ""
    return str(vault.decrypt_json(stored).get("body", ""))
