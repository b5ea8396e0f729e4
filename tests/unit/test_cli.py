from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_CLI = [sys.executable, "-c", "from pacs_sync.cli import main; main()"]


def _run(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(env_extra)
    return subprocess.run([*_CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_config_show_rejects_batch_size_5000_naming_the_variable(tmp_path: Path) -> None:
    result = _run(["config", "show"], {"PACS_SYNC_BATCH_SIZE": "5000"}, tmp_path)
    assert result.returncode == 2
    assert "PACS_SYNC_BATCH_SIZE" in result.stderr
    assert "PACS-008" in result.stderr
    assert "10–1000" in result.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {"PACS_DB_PASSWORD": "db-secret-1", "PACS_TARGET_DSN": "postgresql://tf:tgt-secret-2@h:5432/tf"}
    result = _run(["config", "show"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "db-secret-1" not in result.stdout + result.stderr
    assert "tgt-secret-2" not in result.stdout + result.stderr
    assert "PACS_DB_PASSWORD" in result.stdout
    assert "PACS_SYNC_BATCH_SIZE = 500" in " ".join(result.stdout.split())


def test_config_show_json(tmp_path: Path) -> None:
    result = _run(["config", "show", "--json"], {"PACS_DB_NAME": "PACS_Benton"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["PACS_DB_NAME"] == "PACS_Benton"


@pytest.mark.parametrize("args", [["stack", "status", "--bogus"], ["no-such-command"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert _run(args, {}, tmp_path).returncode == 2
