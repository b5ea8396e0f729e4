"""`pacs-sync run` on the real stack: a stage killed with SIGKILL is restarted; Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pacs_sync.stack.processes import is_running
from tests.e2e.conftest import Pipeline


def test_run_restarts_a_killed_stage_and_stops_all_on_ctrl_c(pipeline: Pipeline) -> None:
    pipeline.cli("sim", "init", "--scale", "small")
    env = {**pipeline.env, "PACS_RESTART_BACKOFF_INITIAL_S": "0.5"}
    run = subprocess.Popen(
        [sys.executable, "-m", "pacs_sync", "run", "--churn-rate", "20", "--no-api"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = Path(env.get("PACS_STATE_DIR", ".pacs-sync"))
    stages_file = state / "run" / f"pipeline.{pipeline.db_name}.{pipeline.clean_prefix}.stages.json"
    try:
        deadline = time.monotonic() + 60
        first: dict[str, int | None] = {}
        while time.monotonic() < deadline:
            if stages_file.exists():
                first = json.loads(stages_file.read_text())
                if len(first) == 4 and None not in first.values():
                    break
            time.sleep(0.2)
        assert set(first) == {"producer", "processor", "sink", "churn"}
        time.sleep(3)
        sink_pid = first["sink"]
        assert sink_pid is not None
        os.kill(sink_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        second = first
        while time.monotonic() < deadline:
            second = json.loads(stages_file.read_text())
            if second.get("sink") not in (None, first["sink"]):
                break
            time.sleep(0.2)
        assert second["sink"] not in (None, first["sink"]), "the killed sink was not restarted"
        assert all(second[name] == first[name] for name in ("producer", "processor", "churn"))
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=90)
    assert run.returncode == 0, err[-3000:]
    assert "exited with code -9" in err
    assert "all stages stopped" in err
    for pid in second.values():
        assert pid is not None
        assert not is_running(pid, cmdline_contains="pacs_sync"), f"stage pid {pid} survived Ctrl-C"
    assert not stages_file.exists()
    assert "Ctrl-C stops every stage" in out
