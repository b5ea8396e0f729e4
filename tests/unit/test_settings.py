from __future__ import annotations

from pathlib import Path

import pytest

from pacs_sync.errors import ConfigurationError, ErrorCode
from pacs_sync.settings import MASK, PacsSettings, mask_dsn
from pacs_sync.stack.settings import StackSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_point_at_the_local_stack() -> None:
    settings = PacsSettings.load()
    stack = StackSettings.load()
    assert (settings.db_host, settings.db_port) == ("127.0.0.1", stack.stack_postgres_port)
    assert settings.kafka_bootstrap_servers == f"127.0.0.1:{stack.stack_kafka_port}"
    assert settings.target_parts["port"] == stack.stack_postgres_port
    assert settings.target_parts["database"] == "terrafusion"


def test_seed_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_DB_HOST", "pacs-sql.benton.local")
    monkeypatch.setenv("PACS_DB_PORT", "1433")
    monkeypatch.setenv("PACS_DB_NAME", "PACS_Benton")
    monkeypatch.setenv("PACS_DB_USER", "tf_sync")
    monkeypatch.setenv("PACS_DB_PASSWORD", "s3cret!")
    monkeypatch.setenv("PACS_SYNC_BATCH_SIZE", "250")
    monkeypatch.setenv("PACS_SYNC_SCHEDULE", "0 */6 * * *")
    monkeypatch.setenv("PACS_ENABLE_CDC", "false")
    settings = PacsSettings.load()
    assert settings.db_host == "pacs-sql.benton.local"
    assert settings.db_port == 1433
    assert settings.db_name == "PACS_Benton"
    assert settings.db_user == "tf_sync"
    assert settings.db_password.get_secret_value() == "s3cret!"
    assert settings.sync_batch_size == 250
    assert settings.sync_schedule == "0 */6 * * *"
    assert settings.enable_cdc is False


def test_dotenv_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PACS_DB_NAME=from_dotenv\nPACS_DB_USER=dotenv_user\n")
    monkeypatch.setenv("PACS_DB_USER", "env_user")
    settings = PacsSettings.load()
    assert settings.db_name == "from_dotenv"
    assert settings.db_user == "env_user"


@pytest.mark.parametrize("size", [10, 1000])
def test_batch_size_bounds_are_inclusive(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setenv("PACS_SYNC_BATCH_SIZE", str(size))
    assert PacsSettings.load().sync_batch_size == size


@pytest.mark.parametrize("size", ["9", "1001", "5000", "lots"])
def test_batch_size_out_of_range_names_the_variable_and_range(
    monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setenv("PACS_SYNC_BATCH_SIZE", size)
    with pytest.raises(ConfigurationError) as caught:
        PacsSettings.load()
    text = str(caught.value)
    assert caught.value.code is ErrorCode.CONFIGURATION_INVALID
    assert text.startswith("PACS-008")
    assert f"PACS_SYNC_BATCH_SIZE={size}" in text
    if size.isdigit():
        assert "10–1000" in text


def test_schedule_must_be_cron(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_SYNC_SCHEDULE", "every night")
    with pytest.raises(ConfigurationError, match="PACS_SYNC_SCHEDULE"):
        PacsSettings.load()


def test_bad_target_dsn_is_named_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_TARGET_DSN", "mysql://u:hunter2@h/db")
    with pytest.raises(ConfigurationError, match="PACS_TARGET_DSN") as caught:
        PacsSettings.load()
    assert "hunter2" not in str(caught.value)


def test_masked_never_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_DB_PASSWORD", "pw-db-123")
    monkeypatch.setenv("PACS_TARGET_DSN", "postgresql://tf:pw-target-456@db.example:5432/tf")
    shown = PacsSettings.load().masked()
    rendered = repr(shown)
    assert "pw-db-123" not in rendered
    assert "pw-target-456" not in rendered
    assert shown["PACS_DB_PASSWORD"] == MASK
    assert shown["PACS_TARGET_DSN"] == f"postgresql://tf:{MASK}@db.example:5432/tf"
    assert "PACS_SYNC_BATCH_SIZE" in shown


def test_settings_are_frozen() -> None:
    settings = PacsSettings.load()
    with pytest.raises(ValueError, match="frozen"):
        settings.db_host = "elsewhere"


def test_mask_dsn_leaves_passwordless_dsn_alone() -> None:
    assert mask_dsn("postgresql://tf@h:1/db") == "postgresql://tf@h:1/db"
