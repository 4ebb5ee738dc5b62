"""Request and response bodies of the template, preview, variable, sender and media routes.

Request models reject unknown fields (422 naming the field). Template sources are limited in the service
by bytes (2 MB html, 1 MB text); here only by characters, which is never stricter.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edm.contacts.schemas import NoNul, Str200
from edm.paging import MAX_ID

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Name200 = Annotated[str, Field(min_length=1, max_length=200), NoNul]
Str1000 = Annotated[str, Field(max_length=1000), NoNul]
Subject = Annotated[str, Field(min_length=1, max_length=998), NoNul]
Str255 = Annotated[str, Field(max_length=255), NoNul]
Html = Annotated[str, Field(min_length=1, max_length=2 * 1024 * 1024), NoNul]
Text = Annotated[str, Field(max_length=1024 * 1024), NoNul]
Markdown = Annotated[str, Field(min_length=1, max_length=64 * 1024), NoNul]
EditorMode = Literal["html", "rich", "markdown"]
LocalPart = Annotated[str, Field(min_length=1, max_length=64), NoNul]
Address = Annotated[str, Field(max_length=320), NoNul]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------


class TemplateCreate(Body):
    """`html`, or `markdown` (its source: the HTML is converted from it, docs/templates.md#markdown)."""

    name: Name200
    description: Str1000 | None = None
    subject: Subject
    preheader: Str255 | None = None
    html: Html | None = None
    markdown: Markdown | None = None
    text: Text | None = None
    inline_css: bool = True
    editor: EditorMode | None = None  # the console editor's mode: "markdown" exactly when `markdown` is given


class TemplateUpdate(Body):
    """Only the fields sent change; the merged result is compiled again before it is saved."""

    name: Name200 | None = None
    description: Str1000 | None = None
    subject: Subject | None = None
    preheader: Str255 | None = None
    html: Html | None = None
    markdown: Markdown | None = None  # the HTML becomes its conversion; `html` alone (or `markdown: null`) drops it
    text: Text | None = None
    inline_css: bool | None = None
    editor: EditorMode | None = None


class TemplateSummaryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    subject: str
    preheader: str | None
    inline_css: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class TemplateOut(TemplateSummaryOut):
    html: str
    text: str | None
    markdown: str | None = None
    editor: str = "html"


class DuplicateRequest(Body):
    name: Name200 | None = None


class PreviewOptions(Body):
    contact_id: Id | None = None  # one of the caller's contacts; sample data when absent
    sender_id: Id | None = None  # one of the caller's senders; the first one when absent


class PreviewRequest(PreviewOptions):
    subject: Subject
    html: Html
    text: Text | None = None
    preheader: Str255 | None = None
    inline_css: bool = True


class PreviewOut(BaseModel):
    subject: str
    preheader: str
    html: str
    text: str
    links: list[str]
    variables: list[str]
    unknown_variables: list[str]
    sample_data: bool
    warnings: list[str]


class VariableOut(BaseModel):
    name: str
    description: str


class AttributeOut(BaseModel):
    name: str
    key: str


class FilterOut(BaseModel):
    name: str
    example: str
    description: str


class VariablesOut(BaseModel):
    variables: list[VariableOut]
    custom_attributes: list[AttributeOut]
    filters: list[FilterOut] = []


# --------------------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------------------


class SenderCreate(Body):
    local_part: LocalPart
    display_name: Str200 | None = None
    reply_to: Address | None = None


class SenderUpdate(Body):
    local_part: LocalPart | None = None
    display_name: Str200 | None = None
    reply_to: Address | None = None


class SenderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    local_part: str
    display_name: str | None
    reply_to: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


# --------------------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------------------


class MediaOut(BaseModel):
    """An image of the media library, as the API shows it: never its bytes."""

    id: int
    filename: str
    content_type: str = Field(description="image/jpeg, image/png or image/gif: decided by the file's content")
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex digest of the bytes (also the public URL's ETag)")
    url: str = Field(description="the public URL to use in templates")
    created_at: dt.datetime
