"""kill -9 of the producer, the processor and the sink, one at a time and all at once, at random
moments during the snapshot and during churn; then nothing is lost (verify) and nothing applied twice.

The plan (targets, order, waits) comes from ``PACS_FAULT_SEED``; the number of rounds from
``PACS_FAULT_ROUNDS``. Every kill is shown to have hit a stage at work, sampled right before it:

* producer: an open Kafka transaction on its change or offsets topics (high watermark above the last
  stable offset); after its restart that transaction must be resolved (the successor fenced it);
* processor: inputs it has not committed while its outputs are still growing (so its restart
  processes them again: the re-emitted records counted at the end);
* sink: its PostgreSQL session inside a transaction (``pg_stat_activity``), i.e. a batch in flight;
* all at once: the sink mid-batch (the others sampled in the same instant).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.conftest import FaultSettings
from tests.faults.harness import STAGES, FaultPipeline, wait_for

PROBE_TIMEOUT_S = 30.0
WAITS = {"snapshot": (0.2, 1.2), "churn": (0.5, 3.0)}
CYCLE: tuple[tuple[str, ...], ...] = (("producer",), ("sink",), ("processor",), STAGES)


def plan(rng: random.Random, rounds: int) -> list[tuple[str, tuple[str, ...]]]:
    """(phase, targets) per round: one round of each kind while the snapshot is in flight (the producer
    first: its own part of the snapshot takes seconds), the rest during churn, in a seeded order."""
    during_snapshot = min(len(CYCLE), rounds)
    snapshot = list(CYCLE[:during_snapshot])
    churn = [CYCLE[i % len(CYCLE)] for i in range(max(rounds - during_snapshot, 0))]
    rng.shuffle(churn)
    return [("snapshot", t) for t in snapshot] + [("churn", t) for t in churn]


class Probes:
    """What each stage is doing right now (see the module docstring)."""

    def __init__(self, pipeline: FaultPipeline) -> None:
        self.p = pipeline
        self.producer_topics = [*pipeline.change_topics(), pipeline.offsets_topic]
        self.outputs = [*pipeline.clean_topics(), pipeline.dlq_topic]

    def producer(self) -> dict[str, Any] | None:
        open_now = self.p.open_transactions(self.producer_topics)
        if open_now:  # records of an uncommitted Kafka transaction are on the broker
            return {"open_transaction_offsets": open_now}
        # During churn a window's records reach the broker only at commit, for milliseconds; the
        # window itself runs inside a read transaction on the source, from its first query to the
        # Kafka commit. Inside one while the change topics grow = publishing a window.
        before = sum(self.p.offsets(self.p.change_topics(), committed_only=False).values())
        states = [
            state for _, state in self.p.producer_sessions() if state in ("active", "idle in transaction")
        ]
        if not states:
            return None
        time.sleep(0.05)
        grew = sum(self.p.offsets(self.p.change_topics(), committed_only=False).values()) - before
        return {"source_read_transaction": states[0], "records_published_in_50ms": grew} if grew > 0 else None

    def processor(self) -> dict[str, Any] | None:
        before = sum(self.p.offsets(self.outputs, committed_only=False).values())
        time.sleep(0.15)
        after = sum(self.p.offsets(self.outputs, committed_only=False).values())
        # A fully processed partition still trails its end by one commit marker.
        lag = self.p.group_lag(f"{self.p.prefix}-processors", self.p.change_topics())
        uncommitted = max(lag - 3 * len(self.p.change_topics()), 0)
        if after > before and uncommitted > 0:
            return {"uncommitted_inputs": uncommitted, "outputs_in_last_150ms": after - before}
        return None

    def sink(self) -> dict[str, Any] | None:
        sessions = self.p.sink_sessions()
        return {"sink_sessions_in_transaction": [s for _, s, _ in sessions]} if sessions else None

    def of(self, stage: str) -> Callable[[], dict[str, Any] | None]:
        return {"producer": self.producer, "processor": self.processor, "sink": self.sink}[stage]


def kill_round(
    p: FaultPipeline,
    probes: Probes,
    rng: random.Random,
    number: int,
    phase: str,
    targets: tuple[str, ...],
    total_rows: int,
) -> dict[str, Any]:
    """Wait a random moment, wait until the stage is at work, SIGKILL it, wait for its restart."""
    wait = rng.uniform(*WAITS[phase])
    time.sleep(wait)
    primary = "sink" if len(targets) > 1 else targets[0]
    probe = probes.of(primary)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    evidence: dict[str, Any] = {}
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            evidence[primary] = found
            break
        time.sleep(0.01)
    for other in targets:
        if other != primary:
            evidence[other] = probes.of(other)()
    high_at_kill = p.offsets(probes.producer_topics, committed_only=False) if "producer" in targets else {}
    pids = p.stage_pids()
    resumes_before = p.read_log("producer").count("resuming from")
    for stage in targets:
        os.kill(pids[stage], signal.SIGKILL)
    killed = time.monotonic()
    applied = p.audit().applied
    restarted = p.wait_stages(targets, replacing=pids, timeout=60)
    restarted_after = time.monotonic() - killed
    resolved_after = None
    if "producer" in targets:
        # The killed producer's open transaction is aborted when its successor fences it.
        def resolved() -> bool:
            stable = p.offsets(probes.producer_topics, committed_only=True)
            return all(stable.get(tp, 0) >= high for tp, high in high_at_kill.items())

        wait_for(resolved, timeout=120, interval=0.2, what="the killed producer's transaction to be aborted")
        resolved_after = round(time.monotonic() - killed, 2)

        # The successor logs where it resumes: a saved position, or "an unfinished snapshot".
        def resumed() -> list[str]:
            lines = [line for line in p.read_log("producer").splitlines() if "resuming from" in line]
            return [line.split("resuming from ", 1)[1] for line in lines[resumes_before:]]

        try:
            evidence["producer_resumed_from"] = wait_for(resumed, timeout=30, what="a resume line")[0]
        except AssertionError:  # killed inside its very first transaction: nothing saved yet
            evidence["producer_resumed_from"] = "the start (no position committed yet)"
    return p.note(
        "kill",
        round=number,
        phase=phase,
        targets=list(targets),
        waited_s=round(wait, 2),
        killed_pids={s: pids[s] for s in targets},
        new_pids={s: restarted[s] for s in targets},
        evidence=evidence,
        mid_batch=evidence.get(primary) is not None,
        snapshot_in_flight=applied < total_rows,
        applied_at_kill=applied,
        restarted_after_s=round(restarted_after, 2),
        producer_transaction_resolved_after_s=resolved_after,
    )


@pytest.mark.timeout(1500)
def test_kill_9_at_random_moments_loses_nothing_and_applies_nothing_twice(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    seed, rounds = fault_settings.seed, fault_settings.rounds
    rng = random.Random(seed)
    rounds_plan = plan(rng, rounds)
    p = fault_pipeline("kill")
    p.note("plan", seed=seed, rounds=len(rounds_plan), scale=fault_settings.scale, plan=rounds_plan)
    p.init_source(str(fault_settings.scale), seed=seed % 1000 + 1)
    total_rows = int(
        p.source_rows(
            "SELECT (SELECT count(*) FROM dbo.property) + (SELECT count(*) FROM dbo.propertyowner) "
            "+ (SELECT count(*) FROM dbo.propertyvalue) + (SELECT count(*) FROM dbo.structure)"
        )[0][0]
    )
    p.prepare_target()
    p.start()
    probes = Probes(p)
    records = []
    churning = False
    for number, (phase, targets) in enumerate(rounds_plan, start=1):
        if phase == "churn" and not churning:
            p.start_churn(fault_settings.churn_rate, seed=seed)
            churning = True
        records.append(kill_round(p, probes, rng, number, phase, targets, total_rows))
    p.stop_churn()
    p.catch_up(timeout=600)
    _verified, audit = p.check_nothing_lost_nothing_twice()
    re_emitted = p.re_emitted()
    restarts = {s: sum(1 for r in records if s in r["targets"]) for s in STAGES}
    p.note(
        "kill-summary",
        seed=seed,
        rounds=len(records),
        kills_per_stage=restarts,
        mid_batch=sum(1 for r in records if r["mid_batch"]),
        snapshot_rounds_in_flight=sum(
            1 for r in records if r["phase"] == "snapshot" and r["snapshot_in_flight"]
        ),
        clean_records_re_emitted=re_emitted,
        changes_applied=audit.applied,
    )

    assert len(records) == len(rounds_plan) >= min(rounds, 4)
    not_shown = [r["round"] for r in records if not r["mid_batch"]]
    assert not not_shown, f"rounds whose kill was not shown to hit a stage at work: {not_shown}"
    snapshot_rounds = [r for r in records if r["phase"] == "snapshot"]
    producer_in_snapshot = [r for r in snapshot_rounds if r["targets"] == ["producer"]]
    assert all(
        r["evidence"]["producer_resumed_from"]
        in ("an unfinished snapshot", "the start (no position committed yet)")
        for r in producer_in_snapshot
    ), f"the producer was not killed inside its snapshot: {producer_in_snapshot}"
    assert all(r["snapshot_in_flight"] for r in snapshot_rounds), (
        "a snapshot-phase kill came after the snapshot had landed: "
        f"{[(r['round'], r['applied_at_kill']) for r in snapshot_rounds]} of {total_rows} rows"
    )
    if restarts["processor"]:
        assert re_emitted > 0, "processor kills should make it re-emit records it had not acknowledged"
