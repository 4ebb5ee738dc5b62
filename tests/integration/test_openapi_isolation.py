"""Authentication and isolation of every operation, generated from `app.openapi()`
(docs/security.md#authentication-and-isolation), so an endpoint added later is covered without editing this file:

(a) every operation except the public ones (docs/api.md#authentication) answers 401 without credentials;
(b) user B calling any path with user A's real ids gets 404 (403 on admin paths): one object of each kind is
    built for A (the `PARAM_KINDS` table maps a path parameter to its kind); a parameter nobody can build
    must be listed in `KNOWN_GAPS`, else the test fails and names it;
(c) a read_only user gets 403 (or 404) on every POST/PUT/PATCH/DELETE, except the ones it may make
    (docs/overview.md#roles-and-permissions).

Requests carry a minimal valid body derived from the operation's schema (`BODIES` overrides it where the
schema alone cannot say what is valid), so a 404 comes from the ownership check, not from validation.
The app, the database and the objects are built once per backend for the whole module."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from edm.app import create_app
from edm.conversations import ingest
from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.models.contacts import Import
from edm.models.content import Media
from edm.models.email_services import UserServiceMapping
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.system import Notification
from edm.models.tasks import SubTask
from edm.models.users import ConsoleSession, Role
from edm.providers.inbound import InboundMail
from edm.tasks import generation
from edm.tasks import proof_sends as test_sends
from edm.users.service import create_token
from tests import factories
from tests.conftest import BACKENDS, PgDatabase
from tests.helpers import Account, make_account, openapi_document, settings_for

module_loop = pytest.mark.asyncio(loop_scope="module")

API = "/api/v1"

# No login needed (docs/api.md#authentication). Tracking, unsubscribe and webhooks live outside /api/v1.
PUBLIC_OPERATIONS = {("POST", f"{API}/auth/login")}
PUBLIC_PREFIXES = ("/webhooks/", "/webhook/", "/t/", "/u/", "/media/", "/healthz", "/readyz", "/metrics", "/console")

# Path parameter → the kind of object it names (built for A and for the read-only user below).
PARAM_KINDS = {
    "contact_id": "contact",
    "tag_id": "tag",
    "template_id": "template",
    "sender_id": "sender",
    "task_id": "task",
    "subtask_id": "subtask",
    "token_id": "token",
    "entry_id": "suppression",
    "event_id": "event",
    "service_id": "service",
    "mapping_id": "mapping",
    "user_id": "user",
    "import_id": "import",
    "media_id": "media",
    "notification_id": "notification",
    "session_id": "session",
    "test_send_id": "test_send",
    "conversation_id": "conversation",
    "message_id": "message",
    "unrouted_id": "unrouted",
}
# Path parameters that are not ids: a valid value, so the route is found.
# None: the first value of the schema's enum. `index` is an attachment's position within its message.
NOT_IDS = {"action": None, "provider": "fake", "index": "0"}

# Parameters whose kind this test cannot build yet: the operations using them are still checked for 401,
# and for 403 on admin paths, but not for the 404 of (b). Each needs a factory in `_objects_of` to leave.
KNOWN_GAPS: dict[str, str] = {
    "secret_id": "webhook secrets live inside a service's encrypted credentials; ids are per service",
    "endpoint_id": "outgoing webhooks (an optional extra) are not built",
    "sid": "webhook secret ids (see secret_id)",
}

# Writes a read_only user (R) may make (docs/overview.md#roles-and-permissions).
READ_ONLY_MAY = {
    ("POST", f"{API}/me/tokens"),
    ("DELETE", f"{API}/me/tokens/{{token_id}}"),
    ("PUT", f"{API}/me/password"),
    ("DELETE", f"{API}/me/sessions"),
    ("DELETE", f"{API}/me/sessions/{{session_id}}"),
    ("POST", f"{API}/auth/logout"),
    ("POST", f"{API}/recipients/estimate"),
    ("POST", f"{API}/templates/preview"),
    ("POST", f"{API}/templates/{{template_id}}/preview"),
    ("POST", f"{API}/me/notifications/{{notification_id}}/read"),
    ("POST", f"{API}/conversations/{{conversation_id}}/read"),
    ("POST", f"{API}/conversations/{{conversation_id}}/unread"),
}

# Bodies the schema cannot produce on its own (valid for the route, so the ownership check is reached).
BODIES: dict[tuple[str, str], Any] = {
    ("POST", f"{API}/tasks/{{task_id}}/schedule"): {},
    ("POST", f"{API}/tasks/{{task_id}}/subtasks/cancel"): {"subtask_ids": [1]},
}


def _spec() -> dict[str, Any]:
    return openapi_document()


SPEC = _spec()
COMPONENTS = SPEC.get("components", {}).get("schemas", {})


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    op: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[dict[str, Any]]:
        return [p for p in self.op.get("parameters", []) if p.get("in") == "path"]

    @property
    def is_admin(self) -> bool:
        return self.path.startswith(f"{API}/admin/")

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


def _is_public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC_OPERATIONS or path.startswith(PUBLIC_PREFIXES)


OPERATIONS = [
    Operation(m.upper(), path, op)
    for path, ops in SPEC["paths"].items()
    for m, op in ops.items()
    if m in ("get", "post", "put", "patch", "delete")
]
PROTECTED = [o for o in OPERATIONS if not _is_public(o.method, o.path)]
WITH_IDS = [o for o in PROTECTED if any(p["name"] not in NOT_IDS for p in o.path_params)]
WRITES = [o for o in PROTECTED if o.is_write and (o.method, o.path) not in READ_ONLY_MAY]


def _ids(ops: list[Operation]) -> list[Any]:
    return [pytest.param(o, id=o.id) for o in ops]


# --------------------------------------------------------------------------------------------------------
# Minimal valid values from a JSON schema
# --------------------------------------------------------------------------------------------------------


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = COMPONENTS[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example(schema: dict[str, Any]) -> Any:
    """The smallest value the schema accepts, shaped so our validators accept it too."""
    schema = _resolve(schema)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if _resolve(o).get("type") != "null"] or schema[key]
            return example(options[0])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: example(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "string":
        fmt = schema.get("format", "")
        if fmt == "date-time":
            return "2030-01-01T00:00:00Z"
        if fmt == "date":
            return "2030-01-01"
        if fmt == "email" or "email" in schema.get("title", "").lower():
            return "someone@example.com"
        return "x" * max(1, int(schema.get("minLength", 1)))
    return None


def _request_kwargs(o: Operation) -> dict[str, Any]:
    if (o.method, o.path) in BODIES:
        return {"json": BODIES[(o.method, o.path)]}
    body = o.op.get("requestBody")
    if not body:
        return {}
    content = body.get("content", {})
    if "multipart/form-data" in content:
        return {"files": {"file": ("list.csv", b"email\nsomeone@example.com\n", "text/csv")}}
    schema = content.get("application/json", {}).get("schema")
    return {"json": example(schema) if schema else {}}


def _query(o: Operation) -> dict[str, Any]:
    return {
        p["name"]: example(p.get("schema", {}))
        for p in o.op.get("parameters", [])
        if p.get("in") == "query" and p.get("required")
    }


def _url(o: Operation, ids: dict[str, int]) -> str:
    path = o.path
    for p in o.path_params:
        name = p["name"]
        if name in NOT_IDS:
            value: Any = NOT_IDS[name] or _resolve(p.get("schema", {})).get("enum", ["x"])[0]
        else:
            value = ids.get(PARAM_KINDS.get(name, ""), 1)
        path = path.replace("{" + name + "}", str(value))
    return path


# --------------------------------------------------------------------------------------------------------
# One app, database and set of objects per backend
# --------------------------------------------------------------------------------------------------------


@dataclass
class World:
    client: httpx.AsyncClient
    alice: Account  # owns the objects
    bob: Account  # another user
    reader: Account  # read_only, owns objects of its own
    alice_ids: dict[str, int]
    reader_ids: dict[str, int]


async def _objects_of(sessionmaker: Any, settings: Any, account: Account, name: str) -> dict[str, int]:
    """One object of each kind owned by `account` (kind names as in PARAM_KINDS)."""
    async with unit_of_work(sessionmaker) as session:
        uid = account.id
        [contact] = await factories.contacts(session, uid, 1, prefix=f"{name}-")
        tag = await factories.tag(session, uid, f"tag-{name}")
        sender = await factories.sender(session, uid, local=f"news-{name}")
        template = await factories.template(session, uid, name=f"tpl-{name}")
        service = await factories.service(session, settings, f"esp-{name}", map_to=[uid])
        mapping = (
            await session.execute(select(UserServiceMapping.id).where(UserServiceMapping.user_id == uid))
        ).scalar_one()
        task = await factories.task(
            session, uid, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, name=f"task-{name}"
        )
        await generation.generate(session, task)
        subtask = (await session.execute(select(SubTask.id).where(SubTask.task_id == task))).scalar_one()
        test_send = await test_sends.create(
            session,
            user_id=uid,
            actor=str(uid),
            request=test_sends.TestSendRequest(template_id=template, emails=[f"{name}-inbox@example.com"]),
        )
        conversation, [message] = await factories.conversation(
            session,
            uid,
            our_address=f"news-{name}@esp-{name}.example.com",
            their_address=f"{name}-customer@example.net",
            last_service_id=service,
            inbound=[{"message_id": f"q-{name}@example.net"}],
        )
        # Mail no user owns (the admins' unrouted list), received as any inbound source hands it over.
        raw = f"From: {name}-stranger@example.net\r\nMessage-ID: <unrouted-{name}@example.net>\r\n\r\nhello\r\n"
        unrouted = await ingest.receive(
            session,
            InboundMail(raw=raw.encode(), source="smtp", recipient=f"nobody-{name}@nowhere.example"),
            now=factories.utc_now(),
        )
        assert unrouted.unrouted_id is not None
        _, token = await create_token(session, user_id=uid, name=f"extra-{name}", scope="read")
        entry = Suppression(
            scope="user", user_id=uid, owner_key=uid, kind="address", value=f"gone-{name}@example.com", reason="manual"
        )
        event = Event(
            source="fake",
            dedupe_key=f"iso-{name}",
            event_type="delivered",
            user_id=uid,
            task_id=task,
            subtask_id=subtask,
            occurred_at=factories.utc_now(),
            raw={},
        )
        now = factories.utc_now()
        upload = Import(user_id=uid, filename="list.csv", format="csv")
        media = Media(
            user_id=uid,
            public_id=uuid.uuid4().hex,
            filename="a.png",
            content_type="image/png",
            size=1,
            sha256="0" * 64,
            data=b"x",
        )
        notice = Notification(user_id=uid, kind="test", title="hello")
        login = ConsoleSession(
            id_hash=uuid.uuid4().hex * 2,
            user_id=uid,
            csrf_secret="c" * 32,
            created_at=now,
            last_seen_at=now,
            expires_at=now + dt.timedelta(days=1),
        )
        session.add_all([entry, event, upload, media, notice, login])
        await session.flush()
        return {
            "contact": contact,
            "tag": tag,
            "sender": sender,
            "template": template,
            "service": service,
            "mapping": mapping,
            "task": task,
            "subtask": subtask,
            "token": token.id,
            "suppression": entry.id,
            "event": event.id,
            "user": uid,
            "test_send": test_send.id,
            "conversation": conversation,
            "message": message,
            "unrouted": unrouted.unrouted_id,
            "import": upload.id,
            "media": media.id,
            "notification": notice.id,
            "session": login.id,
        }


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        target = Path(tmp_path_factory.mktemp("iso")) / f"edm-{uuid.uuid4().hex[:8]}.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    database: PgDatabase = request.getfixturevalue("pg_database")
    database.reset()
    return database.url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(module_db_url: str) -> AsyncIterator[World]:
    db_url = module_db_url
    settings = settings_for(db_url, api_rate_limit=100_000)
    engine = make_engine(db_url, pool_size=5)
    sessionmaker = make_sessionmaker(engine)
    alice = await make_account(sessionmaker, "alice", credit=1000)
    bob = await make_account(sessionmaker, "bob", credit=1000)
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY, credit=1000)
    alice_ids = await _objects_of(sessionmaker, settings, alice, "alice")
    reader_ids = await _objects_of(sessionmaker, settings, reader, "reader")
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            yield World(client, alice, bob, reader, alice_ids, reader_ids)
    await engine.dispose()


# --------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------


def test_the_document_lists_the_main_areas() -> None:
    paths = {o.path for o in OPERATIONS}
    for expected in ("/contacts", "/tasks/{task_id}", "/admin/users", "/suppressions/{entry_id}"):
        assert f"{API}{expected}" in paths
    assert len(PROTECTED) > 80 and len(WITH_IDS) > 40


@module_loop
@pytest.mark.parametrize("o", _ids(PROTECTED))
async def test_requires_authentication(world: World, o: Operation) -> None:
    r = await world.client.request(o.method, _url(o, world.alice_ids), params=_query(o), **_request_kwargs(o))
    assert r.status_code == 401, f"{o.id}: {r.status_code} {r.text[:300]}"
    assert r.json()["error"]["code"] in ("unauthenticated", "invalid_token")
    bad = await world.client.request(
        o.method,
        _url(o, world.alice_ids),
        params=_query(o),
        headers={"Authorization": "Bearer edm_not-a-real-token"},
        **_request_kwargs(o),
    )
    assert bad.status_code == 401, f"{o.id}: {bad.status_code} {bad.text[:300]}"


@module_loop
@pytest.mark.parametrize("o", _ids(WITH_IDS))
async def test_other_users_ids_answer_404(world: World, o: Operation) -> None:
    names = [p["name"] for p in o.path_params if p["name"] not in NOT_IDS]
    unknown = [n for n in names if n not in PARAM_KINDS and n not in KNOWN_GAPS]
    assert not unknown, f"{o.id}: add a factory for {unknown} to PARAM_KINDS/_objects_of, or list it in KNOWN_GAPS"
    r = await world.client.request(
        o.method, _url(o, world.alice_ids), params=_query(o), headers=world.bob.headers, **_request_kwargs(o)
    )
    if o.is_admin:
        assert r.status_code == 403, f"{o.id}: {r.status_code} {r.text[:300]}"
        return
    if any(n in KNOWN_GAPS for n in names):
        assert r.status_code in (403, 404, 422), f"{o.id}: {r.status_code} {r.text[:300]}"
        return
    assert r.status_code == 404, f"{o.id}: {r.status_code} {r.text[:300]}"
    assert r.json()["error"]["code"] == "not_found"


@module_loop
@pytest.mark.parametrize("o", _ids(WRITES))
async def test_read_only_user_cannot_write(world: World, o: Operation) -> None:
    r = await world.client.request(
        o.method, _url(o, world.reader_ids), params=_query(o), headers=world.reader.headers, **_request_kwargs(o)
    )
    assert r.status_code in (403, 404), f"{o.id}: {r.status_code} {r.text[:300]}"


def test_every_integer_parameter_is_bounded_to_64_bits() -> None:
    """A larger number would reach the database and fail there (500) instead of answering 422."""
    unbounded = []
    for o in OPERATIONS:
        for p in o.op.get("parameters", []):
            schema = _resolve(p.get("schema", {}))
            options = [_resolve(s) for s in schema.get("anyOf", [schema])]
            for s in options:
                if s.get("type") == "integer" and (s.get("maximum") is None or s["maximum"] > 2**63 - 1):
                    if p["name"] not in ("limit",):
                        unbounded.append(f"{o.id} {p['in']} {p['name']}")
    assert unbounded == []
