"""The media library through the real ASGI app and database (docs/media.md): the type is decided by the
bytes (a PNG named .jpg is a PNG, text named .png is refused), the 5 MB limit, sanitised filenames, the public
URL with its caching headers and 304, isolation between users, read-only refusals, and the `edm media`
command."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from edm.content.media import MAX_BYTES
from edm.models.users import Role
from tests.helpers import Account, make_account
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as edm

API = "/api/v1/media"
# A real 1×1 PNG, a 1×1 GIF and the start of a JPEG (SOI + APP0 JFIF): what their magic bytes look like.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"


async def _upload(
    client: httpx.AsyncClient, who: Account, name: str, data: bytes, declared: str = "image/jpeg"
) -> httpx.Response:
    return await client.post(API, files={"file": (name, data, declared)}, headers=who.headers)


async def _uploaded(client: httpx.AsyncClient, who: Account, name: str, data: bytes) -> dict[str, Any]:
    r = await _upload(client, who, name, data)
    assert r.status_code == 201, r.text
    return r.json()


def _path(url: str) -> str:
    return urlsplit(url).path


# --------------------------------------------------------------------------------------------------------
# Type by content, size limit, filenames
# --------------------------------------------------------------------------------------------------------


async def test_type_is_decided_by_the_bytes_not_the_name(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    renamed = await _uploaded(client, alice, "photo.jpg", PNG)  # a PNG named .jpg, declared image/jpeg
    assert (renamed["content_type"], renamed["filename"], renamed["size"]) == ("image/png", "photo.jpg", len(PNG))
    assert renamed["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert (await _uploaded(client, alice, "a.png", GIF))["content_type"] == "image/gif"
    assert (await _uploaded(client, alice, "b.gif", JPEG))["content_type"] == "image/jpeg"

    text = await _upload(client, alice, "notes.png", b"just some text, not an image\n", "image/png")
    body = _error(text, 422, "validation_error")
    assert body["details"][0]["field"] == "file" and "JPEG, PNG or GIF" in body["message"]
    _error(await _upload(client, alice, "empty.png", b""), 422, "validation_error")
    _error(
        await _upload(client, alice, "page.gif", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), 422, "validation_error"
    )
    missing = await client.post(API, files={"other": ("x.png", PNG, "image/png")}, headers=alice.headers)
    _error(missing, 422, "validation_error")
    not_multipart = await client.post(API, content=PNG, headers={**alice.headers, "Content-Type": "image/png"})
    _error(not_multipart, 415, "unsupported_media_type")
    listed = (await client.get(API, headers=alice.headers)).json()["items"]
    assert [m["content_type"] for m in listed] == ["image/png", "image/gif", "image/jpeg"]


async def test_size_limit_is_five_megabytes(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    exactly = PNG + b"\x00" * (MAX_BYTES - len(PNG))
    assert (await _uploaded(client, alice, "big.png", exactly))["size"] == MAX_BYTES
    body = _error(await _upload(client, alice, "bigger.png", exactly + b"\x00"), 413, "too_large")
    assert "5 MB" in body["message"]
    _error(await _upload(client, alice, "huge.png", exactly * 2), 413, "too_large")  # refused by Content-Length
    assert len((await client.get(API, headers=alice.headers)).json()["items"]) == 1


async def test_filenames_are_sanitised(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    cases = {
        "../../etc/passwd.png": "passwd.png",
        "C:\\Users\\ann\\My Logo.png": "My Logo.png",
        "..hidden.png": "hidden.png",
        "../": "image.png",
        "x" * 300 + ".png": "x" * 251 + ".png",
    }
    for offered, stored in cases.items():
        created = await _uploaded(client, alice, offered, PNG)
        assert created["filename"] == stored, (offered, created["filename"])
        assert "/" not in created["url"].split("/media/", 1)[1].split("/", 1)[1]
        served = await client.get(_path(created["url"]))
        assert served.status_code == 200 and served.content == PNG, created["url"]
    # Control characters straight in the part header (httpx would percent-encode them).
    raw = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x01b\x7fc\x1b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--b--\r\n"
    )
    multipart = {**alice.headers, "Content-Type": "multipart/form-data; boundary=b"}
    r = await client.post(API, content=raw, headers=multipart)
    assert r.status_code == 201 and r.json()["filename"] == "abc.png", r.text


# --------------------------------------------------------------------------------------------------------
# Public serving
# --------------------------------------------------------------------------------------------------------


async def test_public_url_serves_the_bytes_with_cache_headers_and_304(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    created = await _uploaded(client, alice, "My Logo.jpg", PNG)
    url = created["url"]
    assert url.startswith("http://edm.test/media/") and url.endswith("/My%20Logo.jpg")

    served = await client.get(_path(url))  # no Authorization header: public
    assert served.status_code == 200 and served.content == PNG
    etag = f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert served.headers["content-type"] == "image/png"  # the stored type, not the name's
    assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert served.headers["etag"] == etag and served.headers["x-content-type-options"] == "nosniff"

    for offered in (etag, f'"other", W/{etag}', "*"):
        again = await client.get(_path(url), headers={"If-None-Match": offered})
        assert again.status_code == 304 and again.content == b"", offered
        assert again.headers["etag"] == etag and again.headers["cache-control"].endswith("immutable")
    changed = await client.get(_path(url), headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == PNG

    head = await client.head(_path(url))
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(PNG))

    public_id = _path(url).split("/")[2]
    assert (await client.get(f"/media/{public_id}/other-name.jpg")).status_code == 404
    assert (await client.get("/media/0123456789abcdef0123456789abcdef/My%20Logo.jpg")).status_code == 404
    assert (await client.get(f"/media/{'z' * 100}/x.png")).status_code == 404

    assert (await client.delete(f"{API}/{created['id']}", headers=alice.headers)).status_code == 204
    assert (await client.get(_path(url))).status_code == 404
    _error(await client.get(f"{API}/{created['id']}", headers=alice.headers), 404, "not_found")


# --------------------------------------------------------------------------------------------------------
# Users and roles
# --------------------------------------------------------------------------------------------------------


async def test_isolation_roles_and_pagination(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    ids = [(await _uploaded(client, alice, f"{i}.png", PNG))["id"] for i in range(3)]
    bobs = await _uploaded(client, bob, "bob.gif", GIF)

    _error(await client.get(f"{API}/{ids[0]}", headers=bob.headers), 404, "not_found")
    _error(await client.delete(f"{API}/{ids[0]}", headers=bob.headers), 404, "not_found")
    assert [m["id"] for m in (await client.get(API, headers=bob.headers)).json()["items"]] == [bobs["id"]]
    one = (await client.get(f"{API}/{ids[1]}", headers=alice.headers)).json()
    assert set(one) == {"id", "filename", "content_type", "size", "sha256", "url", "created_at"}

    first = (await client.get(API, params={"limit": 2}, headers=alice.headers)).json()
    assert [m["id"] for m in first["items"]] == ids[:2] and first["next_cursor"]
    rest = (await client.get(API, params={"limit": 2, "cursor": first["next_cursor"]}, headers=alice.headers)).json()
    assert [m["id"] for m in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    _error(await client.get(API, params={"limit": 201}, headers=alice.headers), 422, "validation_error")
    _error(await client.get(API, params={"cursor": "nonsense"}, headers=alice.headers), 422, "validation_error")

    assert (await client.get(API, headers=reader.headers)).json()["items"] == []
    _error(await _upload(client, reader, "r.png", PNG), 403, "forbidden")
    _error(await client.delete(f"{API}/{ids[0]}", headers=reader.headers), 403, "forbidden")
    _error(await client.get(API), 401, "unauthenticated")
    assert (await client.get(f"{API}/{ids[0]}", headers=alice.headers)).status_code == 200


# --------------------------------------------------------------------------------------------------------
# The CLI (a real `edm` process on its own SQLite database)
# --------------------------------------------------------------------------------------------------------


def test_media_through_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert edm(url, "db", "upgrade").returncode == 0
    assert (
        edm(
            url,
            "user",
            "create",
            "--username",
            "ann",
            "--email",
            "ann@example.com",
            "--password-stdin",
            stdin="a long password\n",
        ).returncode
        == 0
    )
    image = tmp_path / "logo.jpg"
    image.write_bytes(PNG)
    uploaded = edm(url, "media", "upload", str(image), "--user", "ann")
    assert uploaded.returncode == 0 and "image/png" in uploaded.stdout and "/logo.jpg" in uploaded.stdout, uploaded
    text = tmp_path / "notes.png"
    text.write_text("hello")
    refused = edm(url, "media", "upload", str(text), "--user", "ann")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "JPEG, PNG or GIF" in lines[0], refused
    missing_user = edm(url, "media", "list", "--user", "nobody")
    assert missing_user.returncode == 2 and "not found" in missing_user.stderr
    listed = edm(url, "media", "list", "--user", "ann")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 1 and "logo.jpg" in listed.stdout, listed
