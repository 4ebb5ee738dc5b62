"""Account commands: users and tokens (credit: edm.cli.credit)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edm.cli.common import emit, read_password, run, session_scope
from edm.errors import BadInput
from edm.models.users import Role
from edm.system.service import CLI
from edm.users.service import create_token, create_user, delete_user, find_user, list_users, reset_password
from edm.users.sessions import end_sessions, expiry_of, list_sessions

user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
token_app = typer.Typer(help="Personal API tokens.", no_args_is_help=True)


@user_app.command("create")
@run
async def user_create(
    username: Annotated[str, typer.Option(help="3–64 chars a-z 0-9 . _ -")],
    email: Annotated[str, typer.Option()],
    admin: Annotated[bool, typer.Option("--admin", help="create an admin")] = False,
    role: Annotated[str, typer.Option(help="user, read_only or admin")] = "user",
    credit: Annotated[int, typer.Option(help="initial credit")] = 0,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a user (the password is prompted twice, or read from stdin)."""
    if credit < 0:
        raise BadInput.field("credit", "must be ≥ 0")
    password = read_password(password_stdin)
    async with session_scope() as session:
        user = await create_user(
            session,
            username=username,
            email=email,
            password=password,
            role=Role.ADMIN if admin else role,
            credit=credit,
            actor=CLI,
        )
        data = {"id": user.id, "username": user.username, "role": user.role, "credit": user.credit_balance}
    emit(data, as_json=as_json, text=f"created {data['role']} {data['username']} (id {data['id']})")


@user_app.command("list")
@run
async def user_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    async with session_scope() as session:
        users = [
            {
                "id": u.id,
                "username": u.username,
                "email": u.email,
                "role": u.role,
                "active": u.is_active,
                "credit": u.credit_balance,
            }
            for u in await list_users(session)
        ]
    emit(
        users,
        as_json=as_json,
        text="\n".join(f"{u['id']:>5}  {u['username']:<20} {u['role']:<9} credit {u['credit']}" for u in users),
    )


@user_app.command("password")
@run
async def user_password(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    must_change: Annotated[bool, typer.Option("--must-change", help="must change it at next login")] = False,
) -> None:
    """Set a user's password (prompted twice, or read from stdin); all its console sessions end."""
    password = read_password(password_stdin)
    async with session_scope() as session:
        row = await find_user(session, user)
        revoked = await reset_password(session, row, password, must_change=must_change, actor=CLI)
    typer.echo(f"password changed for {row.username}; {revoked} session(s) revoked")


@user_app.command("set-password", hidden=True)
@run
async def user_set_password(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Old name of `edm user password`."""
    password = read_password(password_stdin)
    async with session_scope() as session:
        row = await find_user(session, user)
        await reset_password(session, row, password, must_change=False, actor=CLI)
    typer.echo("password changed")


@user_app.command("delete")
@run
async def user_delete(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    yes: Annotated[bool, typer.Option("--yes", help="confirm: deletes the user and all its data")] = False,
) -> None:
    """Delete a user and all its data (refused while it owns a queued, sending or paused task)."""
    if not yes:
        raise BadInput.field("yes", "deleting a user removes all its data; confirm with --yes")
    async with session_scope() as session:
        row = await find_user(session, user)
        name, user_id = row.username, row.id
        await delete_user(session, row, actor=CLI)
    typer.echo(f"deleted user {name} (id {user_id})")


@user_app.command("sessions")
@run
async def user_sessions(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    revoke_all: Annotated[bool, typer.Option("--revoke-all", help="end all the user's console sessions")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List a user's live console sessions, or end them all with --revoke-all."""
    async with session_scope() as session:
        row = await find_user(session, user)
        if revoke_all:
            revoked = await end_sessions(session, row.id, actor=CLI)
        else:
            rows = await list_sessions(session, row.id, after_id=None, limit=1000)
            items: list[dict[str, Any]] = [
                {
                    "id": r.id,
                    "created_at": r.created_at,
                    "last_seen_at": r.last_seen_at,
                    "expires_at": expiry_of(r),
                    "ip": r.ip,
                    "user_agent": r.user_agent,
                }
                for r in rows
            ]
    if revoke_all:
        typer.echo(f"{revoked} session(s) revoked")
        return
    emit(
        items,
        as_json=as_json,
        text="\n".join(
            f"{i['id']:>6}  last seen {i['last_seen_at']:%Y-%m-%d %H:%M} UTC  from {i['ip'] or '-'}  "
            f"{(i['user_agent'] or '')[:60]}"
            for i in items
        )
        or "no sessions",
    )


@token_app.command("create")
@run
async def token_create(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    name: Annotated[str, typer.Option()],
    scope: Annotated[str, typer.Option(help="read or write")] = "write",
) -> None:
    """Create a personal API token; it is printed once and stored only as a hash."""
    async with session_scope() as session:
        row = await find_user(session, user)
        token, _ = await create_token(session, user_id=row.id, name=name, scope=scope, actor=CLI)
    typer.echo(token)
