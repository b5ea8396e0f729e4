"""State files: the start-up check of the state dir, atomic writes, secrets created once."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pacs_sync.errors import ConfigurationError, ErrorCode
from pacs_sync.state_files import create_once, ensure_state_dir, write_atomic


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(_: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "run" / "pipeline.pid"
    write_atomic(path, "123\n")
    write_atomic(path, "456\n")
    assert path.read_text() == "456\n"
    assert _files(path.parent) == ["pipeline.pid"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_removes_the_temporary_and_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "request.json"
    write_atomic(path, '{"tables": ["a"]}')
    _disk_full(monkeypatch)
    with pytest.raises(ConfigurationError) as caught:
        write_atomic(path, '{"tables": ["a", "b"]}')
    assert caught.value.code is ErrorCode.CONFIGURATION_INVALID
    assert str(path) in str(caught.value)
    assert "PACS_STATE_DIR" in str(caught.value)
    assert "No space left" in str(caught.value)
    assert path.read_text() == '{"tables": ["a"]}'
    assert _files(tmp_path) == ["request.json"]


def test_a_state_dir_under_a_regular_file_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError, match="PACS_STATE_DIR") as caught:
        ensure_state_dir(blocker / "state")
    assert str(blocker / "state") in str(caught.value)
    with pytest.raises(ConfigurationError, match="not a directory"):
        ensure_state_dir(blocker)
    with pytest.raises(ConfigurationError, match="PACS_STATE_DIR"):
        write_atomic(blocker / "state" / "x.pid", "1\n")


def test_ensure_state_dir_creates_it_and_leaves_no_probe(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    assert ensure_state_dir(state) == state
    assert state.is_dir()
    assert _files(state) == []


def test_ensure_state_dir_finds_a_full_disk_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _disk_full(monkeypatch)
    with pytest.raises(ConfigurationError, match="No space left"):
        ensure_state_dir(tmp_path)
    assert _files(tmp_path) == []


def test_create_once_creates_a_private_file_and_never_overwrites_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "api-jwt.secret"
    assert create_once(path, "first-secret") == "first-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert create_once(path, "second-secret") == "first-secret"
    assert _files(path.parent) == ["api-jwt.secret"]


def test_a_failed_create_once_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "api-credentials.key"
    _disk_full(monkeypatch)
    with pytest.raises(ConfigurationError, match=r"api-credentials\.key"):
        create_once(path, "k" * 44)
    assert _files(tmp_path) == []  # a later run generates a whole secret, never reuses a cut one
