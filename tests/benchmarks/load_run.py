"""Load run: churn at the highest rate the emulator sustains, with every stage's memory and the lag sampled.

A script, not a pytest test (and not in CI)::

    .venv/bin/python tests/benchmarks/load_run.py [--minutes 10] [--scale benton] [--rate 100000] \
        [--sample-s 5] [--output bench-results/load.json] [--verify]

Against the running local stack (``pacs-sync stack up``; nothing is started or stopped), on a pipeline
of its own (its own emulated PACS database, topics, groups and target database, like the fault
suite's; every setting at the product's default):

1. ``sim init --scale <scale>``, then ``pacs-sync run --no-api`` until the snapshot is in PostgreSQL.
2. ``sim churn --rate <rate>`` (100,000/s: unthrottled, i.e. as fast as the emulator commits) for
   ``--minutes``, every kind of transaction. Every ``--sample-s`` seconds it records, per stage
   (producer, processor, sink, and the supervisor, the churn and the capture Agent), the resident set
   size from ``/proc/<pid>/status`` (VmRSS), and the lag at each hop:

   * ``capture_backlog``: source transactions committed but not yet in the change tables;
   * ``producer_backlog``: captured transactions after the producer's committed position;
   * ``processor_committed_lag``: change-topic records past the processors' committed offsets (what a
     restarted processor would process again; Faust's commits trail its processing, see RELIABILITY.md);
   * ``sink_lag``: clean-topic records not yet in PostgreSQL (offsets the sink committed there);
   * ``staleness_s``: now minus the newest source commit time the target holds (end-to-end freshness).

3. Stops the churn, waits until everything is in PostgreSQL (the drain time), optionally runs
   ``pacs-sync verify``, and writes ``--output``: the samples, peak RSS per stage (the kernel's VmHWM
   at the end, and the largest VmRSS sampled), the achieved churn rate, and whether each lag stayed
   bounded: its least-squares slope over the run after a one-minute warm-up (or the first fifth of a
   shorter run) is below 0.5 % of the rate it accumulates at (records per second: 0.005 × the achieved
   rate; seconds per second: 0.005), i.e. the stage keeps up rather than falling further behind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pacs_sync.stack import LocalStack, StackSettings
from tests.faults.harness import FaultPipeline, new_pipeline, rss_kib

MIB = 1024.0


def hwm_kib(pid: int) -> int | None:
    """The peak resident set size the kernel recorded for ``pid`` (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def agent_pid(p: FaultPipeline) -> int | None:
    """The emulated capture Agent of the run's database."""
    try:
        return int((p.state_dir / "sim" / f"capture-agent-{p.db_name}.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def processes(p: FaultPipeline) -> dict[str, int]:
    """The processes whose memory is sampled."""
    found = dict(p.stage_pids())
    if p.supervisor is not None:
        found["supervisor"] = p.supervisor.pid
    if p.churn is not None:
        found["churn"] = p.churn.pid
    agent = agent_pid(p)
    if agent is not None:
        found["capture-agent"] = agent
    return found


def lags(p: FaultPipeline) -> dict[str, float]:
    """The lag at each hop right now (see the module docstring)."""
    captured = p.source_rows(
        "SELECT (SELECT count(*) FROM cdc_emu.txn_commit), "
        "(SELECT encode(max(start_lsn), 'hex') FROM cdc.lsn_time_mapping WHERE tran_id <> '\\x00')"
    )[0]
    out: dict[str, float] = {"capture_backlog": float(captured[0] or 0)}
    from producer.runner import committed_offset
    from producer.settings import ProducerSettings

    settings = ProducerSettings(db_name=p.db_name, kafka_bootstrap_servers=p.bootstrap, metrics_port=0)
    try:
        offset = committed_offset(settings)
        position = offset.position.commit_lsn.value if offset and offset.position else b""
    except Exception:  # noqa: BLE001  (not readable at this instant)
        position = b""
    out["producer_backlog"] = float(
        p.source_rows(
            "SELECT count(*) FROM cdc.lsn_time_mapping WHERE tran_id <> '\\x00' AND start_lsn > ?",
            (position,),
        )[0][0]
    )
    ends = p.offsets(p.change_topics(), committed_only=True)
    done = p.committed(f"{p.prefix}-processors", ends)
    out["processor_committed_lag"] = float(sum(max(e - max(done.get(tp, 0), 0), 0) for tp, e in ends.items()))
    clean = p.offsets(p.clean_topics(), committed_only=True)
    written = p.sink_offsets()
    out["sink_lag"] = float(sum(max(e - written.get(tp, 0), 0) for tp, e in clean.items()))
    newest = p.target_rows(
        "SELECT extract(epoch FROM now() - max(ts)) FROM "
        "(SELECT max(source_ts) AS ts FROM pacs_sync.properties "
        "UNION ALL SELECT max(source_ts) FROM pacs_sync.owners UNION ALL SELECT max(source_ts) FROM "
        "pacs_sync.valuations UNION ALL SELECT max(source_ts) FROM pacs_sync.structures) AS t"
    )[0][0]
    out["staleness_s"] = float(newest) if newest is not None else -1.0
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points (0 for fewer than three)."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


def main(argv: list[str] | None = None) -> int:
    """Run the load, print the figures, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--scale", default="benton")
    parser.add_argument(
        "--rate", type=float, default=100_000.0, help="offered row changes/s (100000: unthrottled)"
    )
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=Path("bench-results/load.json"))
    parser.add_argument("--verify", action="store_true", help="run pacs-sync verify after the drain")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stages' logs afterwards")
    args = parser.parse_args(argv)

    stack = LocalStack(StackSettings.load())
    if stack.kafka.ping(timeout_s=10) is None or stack.postgres.ping() is None:
        print("the local stack does not answer; run `pacs-sync stack up`", file=sys.stderr)  # noqa: T201
        return 2
    p = new_pipeline(stack, "load", tuned=False)
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        began = time.monotonic()
        p.init_source(args.scale, seed=1)
        p.prepare_target(audit=False)
        p.start()
        snapshot_s = p.settle(timeout=3600)
        result["snapshot_to_postgres_s"] = round(time.monotonic() - began, 1)
        print(  # noqa: T201
            f"snapshot in PostgreSQL after {result['snapshot_to_postgres_s']} s; churn for {args.minutes} min"
        )
        seconds = args.minutes * 60
        p.churn = p.popen(
            "sim",
            "churn",
            "--rate",
            str(args.rate),
            "--duration",
            str(seconds),
            "--seed",
            "7",
            log_name="churn.log",
        )
        started = time.monotonic()
        until = started + args.minutes * 60
        while time.monotonic() < until:
            tick = time.monotonic()
            memory = {name: rss_kib(pid) for name, pid in processes(p).items()}
            sample = {"t": round(tick - started, 1), "rss_kib": memory, **lags(p)}
            samples.append(sample)
            print(  # noqa: T201
                f"{sample['t']:>6.0f}s  "
                + "  ".join(f"{k}={v:.0f}" for k, v in sample.items() if k not in ("t", "rss_kib"))
                + "  rss MiB "
                + " ".join(f"{k}={(v or 0) / MIB:.0f}" for k, v in memory.items()),
                flush=True,
            )
            time.sleep(max(args.sample_s - (time.monotonic() - tick), 0.0))
        peaks_hwm = {name: hwm_kib(pid) for name, pid in processes(p).items()}
        churn, p.churn = p.churn, None
        try:
            churn.wait(timeout=120)  # it stops by itself after --duration and prints what it applied
        except subprocess.TimeoutExpired:
            churn.send_signal(signal.SIGTERM)
            churn.wait(timeout=60)
        churned = p.read_log("churn")
        applied = [line for line in churned.splitlines() if line.startswith("applied ")]
        match = re.search(r"([\d,]+) row changes in ([\d.]+) s", applied[-1]) if applied else None
        changes = int(match[1].replace(",", "")) if match else 0
        rate = changes / float(match[2]) if match else 0.0
        drain_began = time.monotonic()
        p.settle(timeout=3600)
        result["drain_s"] = round(time.monotonic() - drain_began, 1)
        result["dead_letters"] = p.dead_letter_reasons()
        if args.verify:
            verified = p.verify()
            result["verify_exit"] = verified.exit_code
            entities = verified.report.get("entities", {}).items()
            result["verify_dead_lettered_differences"] = {
                e: r.get("dead_lettered", {}).get("count") for e, r in entities
            }
        change_rows = p.change_rows()
        warm = min(60.0, seconds / 5)
        bounded = {}
        for name in (
            "capture_backlog",
            "producer_backlog",
            "processor_committed_lag",
            "sink_lag",
            "staleness_s",
        ):
            points = [(s["t"], s[name]) for s in samples if s["t"] >= warm]
            per_second = slope(points)
            limit = 0.005 if name == "staleness_s" else 0.005 * max(rate, 1.0)
            bounded[name] = {
                "slope_per_s": round(per_second, 3),
                "max": max((v for _, v in points), default=0.0),
                "last": points[-1][1] if points else None,
                "bounded": per_second < limit,
            }
        peak_sampled = {
            name: max(((s["rss_kib"].get(name) or 0) for s in samples), default=0)
            for name in processes(p) | peaks_hwm
        }
        result.update(
            {
                "finished_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "node": platform.node(),
                },
                "settings": {
                    "minutes": args.minutes,
                    "scale": args.scale,
                    "offered_rate": args.rate,
                    "sample_s": args.sample_s,
                },
                "churn": applied[-1] if applied else churned.strip().splitlines()[-1:],
                "churn_row_changes": changes,
                "churn_row_changes_per_s": round(rate, 1),
                "change_table_rows_at_end": change_rows,
                "peak_rss_mib": {name: round((v or 0) / MIB, 1) for name, v in peaks_hwm.items()},
                "peak_rss_sampled_mib": {name: round(v / MIB, 1) for name, v in peak_sampled.items()},
                "lag": bounded,
                "samples": samples,
                "snapshot_settle_s": snapshot_s,
            }
        )
    finally:
        p.destroy(keep_logs=args.keep_logs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2, default=str))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
