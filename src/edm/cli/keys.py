"""`edm keys generate`: a fresh signing key and encryption key for a deployment's environment."""

from __future__ import annotations

from typing import Annotated

import typer

from edm.secret_keys import generate_encryption_key, generate_secret_key

keys_app = typer.Typer(help="Deployment keys (EDM_SECRET_KEY, EDM_ENCRYPTION_KEYS).", no_args_is_help=True)


@keys_app.command("generate")
def generate(
    export: Annotated[bool, typer.Option("--export", help="prefix each line with `export ` for a shell")] = False,
) -> None:
    """Print a new EDM_SECRET_KEY (48 random bytes, url-safe) and EDM_ENCRYPTION_KEYS (a Fernet key), one
    `NAME=value` line each, ready for an env file. Needs no configuration or database. To rotate the
    encryption key, put the new key first and keep the old ones after it, comma-separated (the first
    encrypts, every listed key decrypts); to rotate the signing key, move the old one to
    EDM_SECRET_KEY_PREVIOUS."""
    prefix = "export " if export else ""
    typer.echo(f"{prefix}EDM_SECRET_KEY={generate_secret_key()}")
    typer.echo(f"{prefix}EDM_ENCRYPTION_KEYS={generate_encryption_key()}")
