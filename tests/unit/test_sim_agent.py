from __future__ import annotations

import threading
import time
from typing import Any

from pacs_sync.errors import ErrorCode, RetriableError
from pacs_sync.sim.agent import CaptureAgent


class _Cursor:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.description: Any = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.log.append(sql.split("(")[0])
        if "cdc_jobs" in sql:
            self.description = [("job_type",), ("pollinginterval",)]
            self._rows = [("capture", 0.01), ("cleanup", 3600.0)]
        else:
            self.description, self._rows = None, []

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class _Connection:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def cursor(self) -> _Cursor:
        return _Cursor(self.log)

    def close(self) -> None:
        self.log.append("close")


def test_agent_retries_a_lost_connection_then_scans_and_cleans_up() -> None:
    log: list[str] = []
    attempts = {"n": 0}
    stop = threading.Event()

    def connect() -> Any:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise RetriableError("server restarting", code=ErrorCode.CONNECTION_UNAVAILABLE)
        return _Connection(log)

    thread = threading.Thread(target=CaptureAgent(connect).run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while log.count("CALL sys.sp_cdc_scan") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert attempts["n"] == 3  # two failures, retried with backoff, then connected once
    assert log.count("CALL sys.sp_cdc_scan") >= 1
    assert log.count("CALL cdc_emu.cleanup_job") == 1  # cleanup at its own, longer interval
    assert log[-1] == "close"
