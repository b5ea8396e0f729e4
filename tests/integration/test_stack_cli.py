"""`pacs-sync stack` against the running stack: status answers, a second `up` is a no-op."""

from __future__ import annotations

import subprocess
import sys

from pacs_sync.stack import LocalStack

_CLI = [sys.executable, "-c", "from pacs_sync.cli import main; main()"]


def test_status_exits_0_and_names_both_addresses(
    stack: LocalStack, kafka_bootstrap: str, target_dsn: str
) -> None:
    result = subprocess.run(
        [*_CLI, "stack", "status"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"kafka       {stack.kafka.address}" in result.stdout
    assert f"postgresql  {stack.postgres.address}" in result.stdout
    assert "DOWN" not in result.stdout


def test_second_up_is_a_no_op(stack: LocalStack, kafka_bootstrap: str, target_dsn: str) -> None:
    kafka_pid = stack.kafka.running_pid()
    postgres_pid = stack.postgres.running_pid()
    result = subprocess.run([*_CLI, "stack", "up"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "already running" in lines["kafka"]
    assert "already running" in lines["postgresql"]
    assert "resolving with Maven" not in result.stderr
    assert stack.kafka.running_pid() == kafka_pid
    assert stack.postgres.running_pid() == postgres_pid
