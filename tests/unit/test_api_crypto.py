"""AES-256-GCM sealing of the saved connection settings."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from api import crypto
from api.settings import ApiSettings, decode_key
from pacs_sync.errors import ConfigurationError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
CONTEXT = b"pacs-sync-api:connection_settings:pacs:v1"


def test_round_trip() -> None:
    blob = crypto.seal(KEY, b'{"password": "hunter2"}', context=CONTEXT)
    assert crypto.open_sealed(KEY, blob, context=CONTEXT) == b'{"password": "hunter2"}'
    assert b"hunter2" not in blob


def test_each_seal_uses_a_fresh_nonce() -> None:
    first = crypto.seal(KEY, b"same", context=CONTEXT)
    second = crypto.seal(KEY, b"same", context=CONTEXT)
    assert first != second
    assert first[9:21] != second[9:21]


def test_layout() -> None:
    blob = crypto.seal(KEY, b"abc", context=CONTEXT, nonce_source=lambda n: b"\x07" * n)
    assert blob[0] == crypto.VERSION
    assert blob[1:9] == crypto.key_id(KEY)
    assert blob[9:21] == b"\x07" * 12
    assert len(blob) == 1 + 8 + 12 + 3 + 16


def test_another_key_is_reported_as_such() -> None:
    blob = crypto.seal(KEY, b"abc", context=CONTEXT)
    with pytest.raises(crypto.SealError, match="another key"):
        crypto.open_sealed(OTHER, blob, context=CONTEXT)


@pytest.mark.parametrize("position", [0, 5, 12, 22, -1])
def test_tampering_is_detected(position: int) -> None:
    blob = bytearray(crypto.seal(KEY, b"some settings", context=CONTEXT))
    blob[position] ^= 0x01
    with pytest.raises(crypto.SealError):
        crypto.open_sealed(KEY, bytes(blob), context=CONTEXT)


def test_context_is_bound() -> None:
    blob = crypto.seal(KEY, b"abc", context=CONTEXT)
    with pytest.raises(crypto.SealError, match="authenticate"):
        crypto.open_sealed(KEY, blob, context=b"another purpose")


def test_truncated() -> None:
    with pytest.raises(crypto.SealError, match="truncated"):
        crypto.open_sealed(KEY, b"\x01abc", context=CONTEXT)


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError):
        crypto.seal(b"short", b"abc", context=CONTEXT)
    with pytest.raises(ValueError):
        crypto.seal(KEY, b"abc", context=CONTEXT, nonce_source=lambda n: b"\x00" * 8)


def test_decode_key() -> None:
    assert decode_key(base64.b64encode(KEY)) == KEY
    assert decode_key(base64.urlsafe_b64encode(bytes([250] * 32))) == bytes([250] * 32)
    for bad in (b"not base64!", base64.b64encode(b"x" * 16)):
        with pytest.raises(ValueError):
            decode_key(bad)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_API_CREDENTIALS_KEY", base64.b64encode(KEY).decode())
    assert ApiSettings.load().credentials_key() == KEY


@pytest.mark.usefixtures("clean_env")
def test_bad_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_API_CREDENTIALS_KEY", base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ConfigurationError, match="PACS_API_CREDENTIALS_KEY") as caught:
        ApiSettings.load()
    assert base64.b64encode(b"x" * 16).decode() not in str(caught.value)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("raw", [True, False])
def test_key_file(tmp_path: Path, raw: bool) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY if raw else base64.b64encode(KEY) + b"\n")
    assert ApiSettings.load(api_credentials_key_file=path).credentials_key() == KEY


@pytest.mark.usefixtures("clean_env")
def test_key_file_problems_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PACS_API_CREDENTIALS_KEY_FILE"):
        ApiSettings.load(api_credentials_key_file=tmp_path / "missing").credentials_key()
    (tmp_path / "bad").write_text("nope")
    with pytest.raises(ConfigurationError, match="PACS_API_CREDENTIALS_KEY_FILE"):
        ApiSettings.load(api_credentials_key_file=tmp_path / "bad").credentials_key()
