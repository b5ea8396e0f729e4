"""End to end on the real stack: Benton-scale snapshot, then churn of every kind, then verify."""

from __future__ import annotations

import json
import re
import time

from tests.e2e.conftest import Pipeline


def summary(output: str) -> dict[str, tuple[int, int]]:
    """The per-entity (events, invalid) lines of `pacs-sync sync`."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(properties|owners|valuations|structures)\s+([\d,]+)\s+([\d,]+)\s", line)
        if match:
            found[match[1]] = (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
    return found


def test_benton_snapshot_then_churn_lands_in_postgres_and_verifies(pipeline: Pipeline) -> None:
    init = pipeline.cli("sim", "init", "--scale", "benton", "--dirty-rate", "0.002", "--seed", "7")
    assert "ready" in init.stdout

    started = time.monotonic()
    first = pipeline.cli("sync", "--until-caught-up", "--timeout", "600")
    snapshot_s = time.monotonic() - started
    counts = summary(first.stdout)
    assert set(counts) == {"properties", "owners", "valuations", "structures"}
    assert counts["properties"][0] >= 12_400
    assert counts["valuations"][0] >= 62_000
    assert sum(invalid for _, invalid in counts.values()) > 0, "the dirty rows should have been dead-lettered"

    verified = pipeline.cli("verify", "--json", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]

    churn = pipeline.cli("sim", "churn", "--changes", "6000", "--rate", "2000", "--seed", "11")
    for kind in ("parcel_split", "parcel_merge", "ownership_transfer", "multi_table", "revaluation"):
        assert kind in churn.stdout, f"churn did not exercise {kind}: {churn.stdout}"
    assert "delete" in churn.stdout
    second = pipeline.cli("sync", "--until-caught-up", "--timeout", "600")
    streamed = summary(second.stdout)
    assert sum(events for events, _ in streamed.values()) >= 6000

    verified = pipeline.cli("verify", "--json", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
    report = json.loads(verified.stdout)
    print(f"snapshot landed and caught up in {snapshot_s:.1f} s; verify: {json.dumps(report)[:400]}")  # noqa: T201
