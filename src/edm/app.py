"""create_app(settings): the FastAPI application. The lifespan builds the engine and sessionmaker; routers
are mounted here and nowhere else. One handler maps EdmError to the error shape of docs/api.md#errors. The HTTP
metrics are `edm.metrics.asgi`, the outermost middleware; /metrics answers through `edm.metrics.exposition`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edm import observability
from edm.api import docs, routers
from edm.api import media as media_api
from edm.api import tracking as tracking_api
from edm.api.answers import error_body
from edm.api.idempotency import IdempotencyMiddleware
from edm.api.ratelimit import RateLimitMiddleware
from edm.console import errors as console_errors
from edm.console import public as console_public
from edm.console import routers as console_routers
from edm.db.availability import RETRY_AFTER_SECONDS, database_unavailable, sqlstate
from edm.db.engine import create_engine, make_sessionmaker
from edm.errors import EdmError
from edm.metrics.asgi import ROUTE_TEMPLATE, MetricsMiddleware
from edm.metrics.exposition import Exposition
from edm.migrations.migrate import schema_is_current
from edm.security import passwords
from edm.settings import Settings

log = logging.getLogger("edm.http")
access_log = logging.getLogger("edm.http.access")
# A request id offered by the caller is echoed and logged only when it is a plain token (no spaces, quotes or
# control characters that could forge a log line or header).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        message = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        details.append({"field": ".".join(loc) or "body", "message": message})
    return details


_DATA_ERROR = "a value is out of range or contains characters that cannot be stored (e.g. NUL)"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdmError)
    async def _edm(request: Request, exc: EdmError) -> JSONResponse:
        body = exc.to_dict()
        return JSONResponse(
            error_body(request, body.pop("code"), body.pop("message"), body.pop("details"), **body),
            status_code=exc.status,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse(error_body(request, "invalid_json", "request body is not valid JSON"), 400)
        first = details[0] if details else {"field": "body", "message": "invalid"}
        return JSONResponse(
            error_body(request, "validation_error", f"{first['field']}: {first['message']}", details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if console_errors.wants_html(request):  # a browser off the API: the console's 404/405 page
            return console_errors.error_page(request, exc.status_code)
        codes = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type", 413: "too_large"}
        return JSONResponse(
            error_body(request, codes.get(exc.status_code, "http_error"), str(exc.detail)), status_code=exc.status_code
        )

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if database_unavailable(exc):
            return unavailable_response(request, exc)
        # Safety net for input the endpoint did not check: PostgreSQL's data exceptions (SQLSTATE class 22:
        # NUL in text, number out of range, value too long) are the caller's input, not our failure.
        orig = getattr(exc, "orig", None)
        state = str(getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None) or "")
        if isinstance(exc, DBAPIError) and (state.startswith("22") or isinstance(exc, DataError)):
            log.warning(
                "http.database_refused_input", extra={"request_id": request.state.request_id, "sqlstate": state}
            )
            return JSONResponse(error_body(request, "validation_error", _DATA_ERROR), status_code=422)
        log.exception("http.internal_error", extra={"request_id": getattr(request.state, "request_id", None)})
        return JSONResponse(error_body(request, "internal_error", "internal error"), status_code=500)

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        if "SQLite INTEGER" in str(exc):  # SQLite's form of "number out of range" (sqlite3 refuses > 2**63-1)
            return JSONResponse(error_body(request, "validation_error", _DATA_ERROR), status_code=422)
        log.exception("http.internal_error", extra={"request_id": getattr(request.state, "request_id", None)})
        return JSONResponse(error_body(request, "internal_error", "internal error"), status_code=500)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        if database_unavailable(exc):  # raised outside the guard (the tracking fast path)
            return unavailable_response(request, exc)
        log.exception("http.internal_error", extra={"request_id": getattr(request.state, "request_id", None)})
        if console_errors.wants_html(request):
            return console_errors.error_page(request, 500)
        return JSONResponse(error_body(request, "internal_error", "internal error"), status_code=500)


def unavailable_response(request: Request, exc: BaseException) -> JSONResponse:
    """503 `unavailable` with `Retry-After`: the database is down; the same request succeeds once it is back."""
    log.error(
        "http.database_unavailable",
        extra={
            "request_id": getattr(request.state, "request_id", None),
            "error": type(exc).__name__,
            "sqlstate": sqlstate(exc),  # 55P03: a lock held past EDM_DB_LOCK_TIMEOUT; None: no answer at all
        },
    )
    return JSONResponse(
        error_body(request, "unavailable", "database unavailable, retry later"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class DatabaseOutageGuard:
    """503 for a database outage that no route handler turned into an answer: a connection refused before
    SQLAlchemy could wrap it (a bare `OSError`), or a failure inside a middleware that reads the database (the
    Idempotency-Key claim). Any other exception passes on untouched, to become a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or not database_unavailable(exc):
                raise
            request = Request(scope)
            await unavailable_response(request, exc)(scope, receive, send)


class RequestIdMiddleware:
    """Every request gets an id (the caller's `X-Request-Id` when it is a plain token, or a new one), in
    `request.state.request_id`, in error bodies and in every log line written while it is served (with the id of
    the user it authenticated as), and echoed in the response; one `http.request` line at its end says its route
    template (never the path, which may carry a token), status and duration. A plain ASGI middleware:
    `@app.middleware("http")` wraps each request in extra tasks and streams, which measurably cost the high-volume
    webhook endpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get("x-request-id")
        request_id = offered if offered and _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500  # what the server answers when the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        bound = observability.bind_request(state)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                route = getattr(scope.get("route"), "path", None)
                access_log.info(
                    "http.request",
                    extra={
                        "method": scope["method"],
                        "route": route or "(no route)",
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
            observability.unbind_request(bound)


class TrackingFastPath:
    """The open pixel and the click redirect, answered before routing (docs/tracking.md#public-endpoints;
    bench/RESULTS.md, tracking).

    They are the highest-volume requests EDM serves and the only ones a mailbox's image proxy or a scanner
    sends by the thousand; walking FastAPI's route table and the middleware stack cost more CPU than the
    endpoints themselves. Everything else passes through untouched. The endpoints never raise (a bad token is
    a GIF or a 404 page), so skipping the error-mapping middleware loses nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, token = _tracking_route(scope)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"token": token}
        scope[ROUTE_TEMPLATE] = _TRACKING_TEMPLATES[endpoint]
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)


_TRACKING_TEMPLATES = {tracking_api.open_pixel: "/t/o/{token}.gif", tracking_api.click: "/t/c/{token}"}


def _tracking_route(scope: Scope) -> tuple[Any, str]:
    """(`open_pixel` or `click`, token) for a GET or HEAD of `/t/o/{token}.gif` or `/t/c/{token}`."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return None, ""
    path: str = scope["path"]
    if path.startswith("/t/o/") and path.endswith(".gif") and "/" not in path[5:]:
        return tracking_api.open_pixel, path[5:-4]
    if path.startswith("/t/c/") and "/" not in path[5:] and len(path) > 5:
        return tracking_api.click, path[5:]
    return None, ""


def create_app(settings: Settings, *, engine: Any = None, outbound_transport: Any = None) -> FastAPI:
    """`outbound_transport` (an httpx transport) carries EDM's own outbound HTTP calls made while serving
    requests (SNS certificates and subscription confirmations); tests pass an httpx.MockTransport."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        app.state.engine = engine or create_engine(settings, application_name="edm-serve")
        app.state.sessionmaker = make_sessionmaker(app.state.engine)
        yield
        client = getattr(app.state, "webhook_http", None)
        if client is not None:
            await client.aclose()
        if own_engine:
            await app.state.engine.dispose()

    app = FastAPI(
        title="EDM",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )  # the docs page is edm.api.docs: served without a CDN
    passwords.configure(settings)
    app.state.settings = settings
    app.state.outbound_transport = outbound_transport
    app.state.public_page = console_public.public_page  # the tracking module's pages, in the console's look

    app.add_middleware(IdempotencyMiddleware)  # innermost of ours: sees the caller's final answer
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(DatabaseOutageGuard)  # inside the request id: its 503 carries one
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(TrackingFastPath)  # in front of the request-id middleware
    app.add_middleware(MetricsMiddleware)  # added last: outermost, counts and times every answer

    install_error_handlers(app)

    # Registered before the routers: a liveness probe should not walk ~100 routes to be found.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    exposition = Exposition(settings)

    @app.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (docs/operations.md#metrics): loopback only, unless a token or networks are set."""
        answer = await exposition.answer(
            request.app.state.sessionmaker,
            client_host=request.client.host if request.client else None,
            authorization=request.headers.get("authorization"),
        )
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

    _mount_routers(app, settings)

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        try:
            current = await schema_is_current(request.app.state.engine)
        except Exception:
            return JSONResponse(
                {"ready": False, "reason": "database unreachable"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if not current:
            return JSONResponse({"ready": False, "reason": "schema outdated: run `edm db upgrade`"}, 503)
        return JSONResponse({"ready": True})

    return app


def _mount_routers(app: FastAPI, settings: Settings) -> None:
    for router in routers.all_routers(settings):
        _add_routes(app, router)
    _add_routes(app, media_api.public_router)  # public, no auth: GET /media/{public_id}/{filename}
    _add_routes(app, docs.router)  # public, no auth: GET /api/docs and its vendored Swagger UI files
    for router in console_routers.ROUTERS:  # the web console: /, /login, /account, …, /static/…
        _add_routes(app, router)


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, added to the app as they are. `include_router` wraps a router in an include
    context whose routes FastAPI rebuilds, lazily and per app, at the first request that walks past them
    (~3 ms a route): the first requests of a new process paid ~0.5 s, and the test suite, which builds an
    app per test, spent half of its API tests' time there. Our routers use no include options (prefix,
    tags, dependencies), so each route is already complete as its module declared it; a nested router is
    still included the usual way."""
    if all(isinstance(route, APIRoute | Route | Mount) for route in router.routes):
        app.router.routes.extend(router.routes)
    else:
        app.include_router(router)
