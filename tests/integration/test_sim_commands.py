"""`pacs-sync sim init | churn | scan | agent` on the local stack, in a database of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pacs_sync import dbapi
from pacs_sync.sim.agent import AgentProcess
from pacs_sync.stack import LocalStack
from pacs_sync.stack.postgres import connection_kwargs

_CLI = [sys.executable, "-m", "pacs_sync"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture
def sim_env(stack: LocalStack, target_dsn: str, unique_name: str) -> Iterator[dict[str, str]]:
    env = {"PACS_DB_NAME": unique_name}
    yield env
    AgentProcess(stack.settings.state_dir, unique_name).stop()
    root = stack.postgres.connect()
    try:
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{unique_name}" WITH (FORCE)')
    finally:
        root.close()


def query(stack: LocalStack, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = dbapi.connect(**connection_kwargs(stack.postgres, database))
    try:
        return dbapi.fetch_all(conn, sql, params)
    finally:
        conn.close()


def test_sim_init_loads_enables_cdc_and_starts_the_agent(stack: LocalStack, sim_env: dict[str, str]) -> None:
    database = sim_env["PACS_DB_NAME"]
    result = run_cli(["sim", "init", "--scale", "small", "--seed", "7"], sim_env)
    assert result.returncode == 0, result.stderr
    assert "dbo.Property" in result.stdout
    counts = {
        table: query(stack, database, f"SELECT COUNT(*) FROM dbo.{table}")[0][0]
        for table in ("Property", "PropertyOwner", "PropertyValue", "Structure")
    }
    assert counts == {"Property": 200, "PropertyOwner": 300, "PropertyValue": 1000, "Structure": 239}
    for table, count in counts.items():
        assert f"{count:>9,} rows" in result.stdout.split(f"dbo.{table}")[1].splitlines()[0]
    instances = query(stack, database, "SELECT capture_instance FROM cdc.change_tables ORDER BY 1")
    assert [r[0] for r in instances] == [
        "dbo_Property",
        "dbo_PropertyOwner",
        "dbo_PropertyValue",
        "dbo_Structure",
    ]
    assert AgentProcess(stack.settings.state_dir, database).running_pid() is not None
    # The sync login from the settings reads but cannot write.
    settings = stack.settings
    reader = dbapi.connect(
        host="127.0.0.1",
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password.get_secret_value(),
        database=database,
    )
    try:
        assert dbapi.fetch_all(reader, "SELECT COUNT(*) FROM dbo.Structure")[0][0] == 239
        reader.commit()
        with pytest.raises(dbapi.DatabaseError):
            reader.cursor().execute("DELETE FROM dbo.Structure")
        reader.rollback()
    finally:
        reader.close()


def test_same_seed_same_data_and_dirty_rows_on_request(stack: LocalStack, sim_env: dict[str, str]) -> None:
    database = sim_env["PACS_DB_NAME"]
    digest_sql = "SELECT md5(string_agg(CAST(p AS text), ',' ORDER BY propertyid)) FROM dbo.property AS p"
    assert run_cli(["sim", "init", "--scale", "300", "--seed", "11"], sim_env).returncode == 0
    first = query(stack, database, digest_sql)[0][0]
    assert run_cli(["sim", "init", "--scale", "300", "--seed", "11"], sim_env).returncode == 0
    assert query(stack, database, digest_sql)[0][0] == first
    dirty = run_cli(["sim", "init", "--scale", "300", "--seed", "11", "--dirty-rate", "0.2"], sim_env)
    assert dirty.returncode == 0, dirty.stderr
    assert "dirty:" in dirty.stdout
    assert query(stack, database, digest_sql)[0][0] != first


def test_sim_churn_applies_transactions_that_the_agent_captures(
    stack: LocalStack, sim_env: dict[str, str]
) -> None:
    database = sim_env["PACS_DB_NAME"]
    assert run_cli(["sim", "init", "--scale", "small"], sim_env).returncode == 0
    result = run_cli(["sim", "churn", "--rate", "400", "--changes", "300", "--seed", "3"], sim_env)
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    assert ", 0 failed" in result.stdout
    applied = int(result.stdout.split("transactions,")[1].split("row changes")[0].replace(",", ""))
    assert applied >= 300
    # The background agent (1 s interval) captures every committed change without a manual scan.
    deadline = time.monotonic() + 20
    captured = 0
    while time.monotonic() < deadline:
        # Pending first: a scan commits its change rows and its drained tickets together.
        pending = query(stack, database, "SELECT COUNT(*) FROM cdc_emu.txn_commit")[0][0]
        captured = sum(
            query(stack, database, f"SELECT COUNT(*) FROM cdc.{ci}_ct WHERE __$operation <> 3")[0][0]
            for ci in ("dbo_property", "dbo_propertyowner", "dbo_propertyvalue", "dbo_structure")
        )
        if pending == 0 and captured > 0:
            break
        time.sleep(0.5)
    assert pending == 0
    assert captured >= applied  # one row per insert/delete, two per update (op 3 excluded above)


def test_sim_churn_reconnects_after_its_connection_is_cut_and_stops_on_sigterm(
    stack: LocalStack, sim_env: dict[str, str]
) -> None:
    database = sim_env["PACS_DB_NAME"]
    assert run_cli(["sim", "init", "--scale", "small"], sim_env).returncode == 0
    churn = subprocess.Popen(
        [*_CLI, "sim", "churn", "--json", "--rate", "200", "--duration", "600", "--seed", "5"],
        env={**os.environ, **sim_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(4)
        cut = query(
            stack,
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = ? AND application_name = 'pacs-sync sim churn'",
            (database,),
        )
        assert cut == [(True,)]
        changes_at_cut = query(stack, database, "SELECT COUNT(*) FROM cdc.lsn_time_mapping")[0][0]
        time.sleep(4)
        assert churn.poll() is None, churn.communicate()[1][-4000:]
        churn.terminate()
        out, err = churn.communicate(timeout=30)
    finally:
        if churn.poll() is None:
            churn.kill()
    assert churn.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["reconnects"] == 1
    assert summary["changes"] > 0
    assert summary["seconds"] < 30  # SIGTERM ended it, not --duration
    # It kept writing after the cut (the capture agent records each committed transaction).
    assert query(stack, database, "SELECT COUNT(*) FROM cdc.lsn_time_mapping")[0][0] > changes_at_cut


def test_bad_scale_is_a_usage_error(sim_env: dict[str, str]) -> None:
    result = run_cli(["sim", "init", "--scale", "huge"], sim_env)
    assert result.returncode == 2
    assert "--scale" in result.stderr


def test_keep_existing_leaves_the_database_as_it_is(stack: LocalStack, sim_env: dict[str, str]) -> None:
    database = sim_env["PACS_DB_NAME"]
    assert run_cli(["sim", "init", "--scale", "small"], sim_env).returncode == 0
    conn = dbapi.connect(**connection_kwargs(stack.postgres, database))
    try:
        conn.cursor().execute("DELETE FROM dbo.Structure")
        conn.commit()
    finally:
        conn.close()
    kept = run_cli(["sim", "init", "--scale", "small", "--keep-existing"], sim_env)
    assert kept.returncode == 0, kept.stderr
    assert "kept" in kept.stdout
    assert query(stack, database, "SELECT COUNT(*) FROM dbo.Structure")[0][0] == 0  # not re-created
