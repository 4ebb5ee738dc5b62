"""Admin settings routes (SPEC §19.2, §16.3): read every setting with its default, change several at once.

A change is validated as a whole (a bad key or value changes nothing and is named in the 422), stored, and
audited with its old and new value. Workers pick changes up within 30 s without a restart.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel

from edm.api.deps import Admin, AdminWriter, Session
from edm.ops.service import Actor, settings_view, update_settings

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class SettingOut(BaseModel):
    key: str
    value: Any
    default: Any
    updated_by: int | None
    updated_at: dt.datetime | None


class SettingsOut(BaseModel):
    items: list[SettingOut]


class SettingsChanged(SettingsOut):
    changed: list[str]


_EXAMPLE = {"bounce.soft_limit": 2, "suppression.unsubscribe_scope": "global"}


@router.get("/settings", response_model=SettingsOut)
async def get_settings(session: Session, caller: Admin) -> dict[str, Any]:
    """Every setting: current value, default, and who changed it last (null while it has its default)."""
    return {"items": await settings_view(session)}


@router.patch("/settings", response_model=SettingsChanged)
async def patch_settings(session: Session, caller: AdminWriter, request: Request,
                         body: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])]) -> dict[str, Any]:
    """Change settings: `{"key": value, ...}`. All or nothing; `changed` lists the keys whose value moved."""
    actor = Actor(caller.id, "token", request.client.host if request.client else None)
    changed = await update_settings(session, body, actor=actor)
    return {"items": await settings_view(session), "changed": changed}
