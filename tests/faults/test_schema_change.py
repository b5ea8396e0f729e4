"""A schema change while churn runs: a column is added to dbo.Property and a second capture instance
is enabled for it (SQL Server's way: the first instance ignores new columns). The producer switches
to the new instance at its start LSN and publishes with an evolved schema; every later change must
still reach PostgreSQL, with nothing lost or applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import FaultSettings
from tests.faults.harness import FaultPipeline, wait_for


@pytest.mark.timeout(600)
def test_a_new_column_and_second_capture_instance_during_churn_lose_nothing(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    p = fault_pipeline("schema")
    p.init_source("300", seed=4)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)
    p.start_churn(fault_settings.churn_rate, seed=fault_settings.seed)
    time.sleep(3)
    p.source_sql(("ALTER TABLE dbo.property ADD zoningcode varchar(10)", ()))
    p.source_sql(
        ("UPDATE dbo.property SET zoningcode = ?, city = ? WHERE propertyid % 10 = 0", ("R-1", "Zoned"))
    )
    p.scan()
    with p.admin() as admin:
        admin.enable_table("Property", capture_instance="dbo_Property_v2")
        admin.scan()
    instances = [r[0] for r in p.source_rows("SELECT capture_instance FROM cdc.change_tables ORDER BY 1")]
    p.source_sql(
        ("UPDATE dbo.property SET zoningcode = ?, city = ? WHERE propertyid % 10 = 1", ("C-2", "Rezoned"))
    )
    switched = wait_for(
        lambda: [line for line in p.read_log("producer").splitlines() if "capture instance switch" in line],
        timeout=120,
        what="the producer to switch capture instances",
    )
    time.sleep(5)  # churn goes on through the new instance
    p.stop_churn()
    p.settle(timeout=300)
    evolved = [line for line in p.read_log("producer").splitlines() if "evolved schema" in line]
    p.note("schema-change", capture_instances=instances, switch=switched[:2], evolved=evolved[:1])
    assert "dbo_Property_v2" in instances
    assert evolved, "the producer did not publish an evolved schema"

    verified = p.verify()
    reasons = p.dead_letter_reasons()
    if verified.dead_letters_read:
        p.note("schema-change-dead-letters", reasons=reasons, verify_exit=verified.exit_code)
    assert not verified.dead_letters_read, f"changes after the switch were dead-lettered: {reasons}"
    p.check_nothing_lost_nothing_twice()
    rezoned = p.target_rows("SELECT count(*) FROM terrafusion.properties WHERE city = 'Rezoned'")[0][0]
    assert rezoned == p.source_rows("SELECT count(*) FROM dbo.property WHERE city = 'Rezoned'")[0][0] > 0
