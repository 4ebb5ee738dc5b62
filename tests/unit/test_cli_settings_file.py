"""Where the CLI finds its settings beside `edm demo`: the demo's own file in the directory it ran in, never
when the environment names a deployment, an explicit `EDM_ENV_FILE`, and the environment always winning."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import typer

from edm.cli import common, demo

DEMO_VALUES = {
    "EDM_ENV": "demo",
    "EDM_DATABASE_URL": "sqlite:////srv/demo/var/edm-demo.db",
    "EDM_SECRET_KEY": "demo-key-" + "k" * 40,
    "EDM_PUBLIC_URL": "http://127.0.0.1:8123",
}


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# a comment line\n" + "".join(f"{name}={value}\n" for name, value in values.items()))
    return path


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EDM_* variable in the environment; whatever a test (or the demo) sets is undone afterwards."""
    for name in [
        *DEMO_VALUES,
        "EDM_ENCRYPTION_KEYS",
        "EDM_ENV_FILE",
        "EDM_LOG_LEVEL",
        *(n for n in os.environ if n.startswith("EDM_")),
    ]:
        monkeypatch.setenv(name, "")  # recorded, so the original value (or its absence) comes back
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_demo_file_is_read_only_in_its_directory_and_only_without_deployment_variables(tmp_path: Path) -> None:
    demo_dir, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo_file = write_env(demo_dir / "var" / "edm-demo.env", DEMO_VALUES)
    assert common.settings_file(environ={}, cwd=demo_dir) == demo_file
    assert common.settings_file(environ={"EDM_LOG_LEVEL": "DEBUG"}, cwd=demo_dir) == demo_file
    assert common.settings_file(environ={}, cwd=elsewhere) is None
    for name in common.DEPLOYMENT_VARIABLES:  # a deployment (it must set its keys) never reads demo settings
        assert common.settings_file(environ={name: "set"}, cwd=demo_dir) is None, name
    explicit = write_env(elsewhere / "edm.env", {"EDM_ENV": "development"})
    assert (
        common.settings_file(environ={"EDM_ENV_FILE": str(explicit), "EDM_SECRET_KEY": "x"}, cwd=demo_dir) == explicit
    )


def test_the_cli_uses_the_demo_file_and_the_environment_wins(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    write_env(tmp_path / "var" / "edm-demo.env", DEMO_VALUES)
    clean_environment.chdir(tmp_path)
    clean_environment.setenv("EDM_PUBLIC_URL", "http://from-the-environment.example")
    cfg = common.settings()
    assert (cfg.env, cfg.database_url, cfg.secret_key) == (
        "demo",
        DEMO_VALUES["EDM_DATABASE_URL"],
        DEMO_VALUES["EDM_SECRET_KEY"],
    )
    assert cfg.public_url == "http://from-the-environment.example"


def test_without_the_demo_file_the_cli_is_production_and_refuses_to_start(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.chdir(tmp_path)
    with pytest.raises(typer.Exit) as exited:
        common.settings()
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: configuration error:") and "EDM_SECRET_KEY" in err and err.count("\n") == 1


def test_an_explicit_env_file_is_read_from_anywhere_and_must_exist(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = write_env(tmp_path / "demo" / "var" / "edm-demo.env", DEMO_VALUES)
    clean_environment.chdir(tmp_path)
    clean_environment.setenv("EDM_ENV_FILE", str(env_file))
    clean_environment.setenv("EDM_DATABASE_URL", "sqlite:////elsewhere.db")
    cfg = common.settings()
    assert cfg.env == "demo" and cfg.database_url == "sqlite:////elsewhere.db", "the environment wins over the file"

    clean_environment.setenv("EDM_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(typer.Exit) as exited:
        common.settings()
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err == f"error: EDM_ENV_FILE={tmp_path / 'missing.env'}: no such file\n"


def test_the_demo_writes_only_what_it_chose_owner_only(tmp_path: Path, clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.chdir(tmp_path)
    secret_url = "postgresql://edm:hunter2-password@db.internal/edm"
    clean_environment.setenv("EDM_DATABASE_URL", secret_url)  # the user's own: used, never written down
    settings, chosen = demo.demo_settings(port=8123)
    demo.write_cli_settings(chosen)
    written = tmp_path / common.DEMO_ENV_FILE
    text = written.read_text()
    assert "hunter2" not in text and "EDM_DATABASE_URL" not in text and settings.database_url == secret_url
    assert "EDM_ENV=demo\n" in text and f"EDM_SECRET_KEY={settings.secret_key}\n" in text
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "it holds the demo's key"
    assert len(settings.secret_key) >= 40, "a random key of the demo's own"

    _, again = demo.demo_settings(port=8123)  # the environment now holds the first run's values: nothing chosen
    assert again == {}
