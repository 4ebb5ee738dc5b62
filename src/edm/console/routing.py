"""Console routers: every route of `new_router()` answers HTML, whatever goes wrong.

The API maps errors to JSON in `edm.app`; a console route catches them first, after the request's unit of work
has rolled back (the `Session` dependency wraps the handler):

- `Redirect` (no session, a forced password change) → 303 to its location;
- an `EdmError` → the error page with its status (404, 403, 409, …);
- a malformed URL parameter → the 404 page;
- a database outage → the 503 page; anything else → logged with the request id, and the generic 500 page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from edm.console.auth import Redirect
from edm.console.errors import error_page
from edm.db.availability import database_unavailable
from edm.errors import EdmError

log = logging.getLogger("edm.console")


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Redirect as exc:
                return RedirectResponse(exc.location, status_code=303)
            except EdmError as exc:
                return error_page(request, exc.status, exc)
            except RequestValidationError:
                return error_page(request, 404)
            except HTTPException as exc:
                return error_page(request, exc.status_code)
            except Exception as exc:
                if database_unavailable(exc):
                    return error_page(request, 503)
                log.exception(
                    "console.internal_error", extra={"request_id": getattr(request.state, "request_id", None)}
                )
                return error_page(request, 500)

        return console_handler


def new_router() -> APIRouter:
    """The router of a console page module: HTML answers only, not in the OpenAPI document."""
    return APIRouter(route_class=ConsoleRoute, include_in_schema=False)
