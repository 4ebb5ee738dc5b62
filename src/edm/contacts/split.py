"""A/B split of a root tag into child groups (docs/contacts.md#ab-split).

Sizes: largest-remainder rounding of N × ratio (ties to the earlier group). Assignment: the source members
sorted by contact id, shuffled by Fisher–Yates with `random.Random(seed)`, cut into consecutive runs of those
sizes. The same seed and the same members therefore always give the same groups, on any machine.

The Tag table has no column for the seed, so it is stored in each group's description
("A/B split of <tag>: group i of n, ratio r, seed s") and returned in the answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.contacts.memberships import link_tags
from edm.contacts.schemas import SplitGroupOut, SplitOut
from edm.contacts.tags import check_tag_name, get_tag, tasks_naming_tag
from edm.errors import BadInput, Conflict, InUse
from edm.models.contacts import ContactTag, Tag

MIN_GROUPS, MAX_GROUPS = 2, 10
RATIO_TOLERANCE = 1e-9
SEED_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class SplitRequest:
    group_count: int
    ratios: tuple[float, ...] | None = None
    group_names: tuple[str, ...] | None = None
    seed: int | None = None
    regroup: bool = False


def group_sizes(total: int, ratios: Sequence[float]) -> list[int]:
    """Largest remainder: floor(N × r) each, then one more to the largest fractional parts (earlier first)."""
    exact = [total * r for r in ratios]
    sizes = [math.floor(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def shuffled(members: Sequence[int], seed: int) -> list[int]:
    """Fisher–Yates (Durstenfeld) over the members sorted by id, driven by `random.Random(seed)`."""
    items = sorted(members)
    rng = random.Random(seed)
    for i in range(len(items) - 1, 0, -1):
        j = rng.randrange(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def assign(members: Sequence[int], sizes: Sequence[int], seed: int) -> list[list[int]]:
    order = shuffled(members, seed)
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start : start + size])
        start += size
    return groups


def check_request(request: SplitRequest, tag_name: str) -> tuple[list[float], list[str], int]:
    """Ratios (default equal), names (default `<tag> group i`) and the seed (random when absent)."""
    n = request.group_count
    if not MIN_GROUPS <= n <= MAX_GROUPS:
        raise BadInput.field("group_count", f"must be {MIN_GROUPS} to {MAX_GROUPS}")
    ratios = list(request.ratios) if request.ratios is not None else [1 / n] * n
    if len(ratios) != n:
        raise BadInput.field("ratios", f"must list {n} numbers (one per group)")
    if any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise BadInput.field("ratios", "must be positive numbers")
    if abs(math.fsum(ratios) - 1) > RATIO_TOLERANCE:
        raise BadInput.field("ratios", "must sum to 1")
    names = (
        [check_tag_name(x) for x in request.group_names]
        if request.group_names is not None
        else [f"{tag_name[: 64 - len(f' group {i}')]} group {i}" for i in range(1, n + 1)]
    )
    if len(names) != n:
        raise BadInput.field("group_names", f"must list {n} names (one per group)")
    if len({x.lower() for x in names}) != n:
        raise BadInput.field("group_names", "must be distinct")
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**53)
    if not 0 <= seed <= SEED_LIMIT:
        raise BadInput.field("seed", f"must be 0 to {SEED_LIMIT}")
    return ratios, names, seed


async def split_tag(session: AsyncSession, *, user_id: int, tag_id: int, request: SplitRequest) -> SplitOut:
    """Split a root tag's members into new child groups; returns the seed and each group's id, name and size."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    if tag.parent_id is not None:
        raise BadInput.field("tag_id", "only a root tag can be split")
    ratios, names, seed = check_request(request, tag.name)
    old_groups = list(
        await session.scalars(
            select(Tag)
            .where(Tag.user_id == user_id, Tag.parent_id == tag.id, Tag.is_split_group.is_(True))
            .order_by(Tag.id)
        )
    )
    if old_groups and not request.regroup:
        raise Conflict(
            "the tag already has split groups: send regroup=true to replace them",
            details=[{"field": "regroup", "message": f"{len(old_groups)} split group(s) exist"}],
            groups=[{"id": g.id, "name": g.name} for g in old_groups],
        )
    members = set(await session.scalars(select(ContactTag.contact_id).where(ContactTag.tag_id == tag.id)))
    if old_groups:
        members |= await _dissolve(session, user_id=user_id, groups=old_groups)
    await _refuse_taken_names(session, user_id=user_id, parent_id=tag.id, names=names)
    sizes = group_sizes(len(members), ratios)
    groups = []
    for index, (name, ratio, chosen) in enumerate(
        zip(names, ratios, assign(list(members), sizes, seed), strict=True), start=1
    ):
        group = Tag(
            user_id=user_id,
            name=name,
            parent_id=tag.id,
            color=tag.color,
            is_split_group=True,
            description=f"A/B split of {tag.name[:64]}: group {index} of {len(names)}, ratio {ratio:.6g}, seed {seed}",
        )
        session.add(group)
        await session.flush()
        await link_tags(session, [(contact_id, group.id) for contact_id in chosen])
        groups.append(SplitGroupOut(id=group.id, name=name, ratio=ratio, size=len(chosen)))
    return SplitOut(tag_id=tag.id, seed=seed, source_count=len(members), groups=groups)


async def _dissolve(session: AsyncSession, *, user_id: int, groups: list[Tag]) -> set[int]:
    """Delete the old split groups (409 while a draft/scheduled task's rule names one); returns their members."""
    for group in groups:
        tasks = await tasks_naming_tag(session, user_id=user_id, tag_id=group.id)
        if tasks:
            raise InUse(
                f"split group {group.name!r} is used by the recipient rule of draft or scheduled tasks",
                details=[{"field": "regroup", "message": f"used by {len(tasks)} task(s)"}],
                tasks=tasks,
            )
    ids = [g.id for g in groups]
    members = set(await session.scalars(select(ContactTag.contact_id).where(ContactTag.tag_id.in_(ids))))
    await session.execute(delete(ContactTag).where(ContactTag.tag_id.in_(ids)))
    await session.execute(delete(Tag).where(Tag.id.in_(ids), Tag.user_id == user_id))
    for group in groups:
        session.expunge(group)
    return members


async def _refuse_taken_names(session: AsyncSession, *, user_id: int, parent_id: int, names: list[str]) -> None:
    taken = list(
        await session.scalars(
            select(Tag.name).where(Tag.user_id == user_id, Tag.parent_id == parent_id, Tag.name.in_(names))
        )
    )
    if taken:
        raise Conflict(
            f"the tag already has children named {', '.join(sorted(taken))}",
            details=[{"field": "group_names", "message": f"already exists: {n}"} for n in sorted(taken)],
        )
