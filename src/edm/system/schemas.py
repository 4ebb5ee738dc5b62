"""Response bodies of the admin settings, the audit log and the caller's notifications."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edm.paging import PageOut


class SettingOut(BaseModel):
    key: str = Field(description="dotted name, e.g. bounce.soft_limit")
    value: Any
    default: Any
    updated_by: int | None = Field(description="who changed it last (null while it has its default)")
    updated_at: dt.datetime | None


class SettingsOut(BaseModel):
    items: list[SettingOut]


class SettingsChangedOut(SettingsOut):
    changed: list[str] = Field(description="the keys whose value moved")


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: dt.datetime
    actor_user_id: int | None = Field(description="null for the CLI and the system")
    actor_kind: str = Field(description="session, token, cli or system: how the actor was authenticated")
    action: str = Field(description="dotted, e.g. credit.adjust")
    target_type: str | None
    target_id: str | None
    details: dict[str, Any] | None = Field(description="what changed; never a secret")
    ip: str | None


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    title: str
    body: str | None
    link: str | None
    read_at: dt.datetime | None
    created_at: dt.datetime


class NotificationPageOut(PageOut[NotificationOut]):
    unread: int = Field(description="how many of the caller's notifications are unread (all pages)")
