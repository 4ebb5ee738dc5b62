"""Demo mailbox (demo/development/test only): the messages the local SMTP sink captured."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from edm.devtools.smtp_sink import list_stored

router = APIRouter(prefix="/demo", include_in_schema=False)


def _messages(request: Request) -> list[dict[str, object]]:
    directory = getattr(request.app.state, "mailbox_dir", None)
    if directory is None or not Path(directory).exists():
        return []
    return list_stored(Path(directory))


@router.get("/mailbox.json")
async def mailbox_json(request: Request) -> dict[str, object]:
    messages = _messages(request)
    return {"count": len(messages), "items": [{k: str(v) for k, v in m.items() if k != "path"}
                                              for m in messages[-200:]]}


@router.get("/mailbox")
async def mailbox(request: Request) -> HTMLResponse:
    messages = _messages(request)
    rows = "".join(
        f"<tr><td>{html.escape(str(m['received_at']))}</td><td>{html.escape(str(m['from']))}</td>"
        f"<td>{html.escape(str(m['to']))}</td><td>{html.escape(str(m['subject']))}</td>"
        f"<td><code>{html.escape(str(m['subtask_id']))}</code></td></tr>"
        for m in reversed(messages[-500:]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>EDM demo mailbox</title>
<meta http-equiv="refresh" content="3"><style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}}</style></head>
<body><h1>Demo mailbox</h1><p>{len(messages)} messages captured by the local SMTP sink (refreshes every 3 s).</p>
<table><tr><th>received</th><th>from</th><th>to</th><th>subject</th><th>X-EDM-SubTask-Id</th></tr>{rows}</table>
</body></html>"""
    return HTMLResponse(page)
