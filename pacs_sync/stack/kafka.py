"""The local Apache Kafka broker: jars from Maven (cached), KRaft storage, start, stop, ping."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pacs_sync.errors import LocalStackError
from pacs_sync.stack import processes
from pacs_sync.stack.config_files import new_kafka_cluster_id, render_log4j2, render_server_properties
from pacs_sync.stack.settings import StackSettings

logger = logging.getLogger(__name__)

_MAIN_CLASS = "kafka.Kafka"


class KafkaServer:
    """One single-node KRaft broker+controller under ``<state_dir>/kafka``.

    Jars live in ``<state_dir>/cache/kafka-lib-<pom hash>``: resolved once by Maven, then reused
    offline, and kept by ``down --purge`` (which deletes the broker's data, not the cache).
    """

    def __init__(self, settings: StackSettings) -> None:
        """Lay out the broker's paths from the settings; nothing is touched yet."""
        self.settings = settings
        state = settings.state_dir.resolve()
        self.home = state / "kafka"
        self.data_dir = self.home / "data"
        self.log_dir = self.home / "logs"
        self.properties = self.home / "server.properties"
        self.log4j = self.home / "log4j2.properties"
        self.pid_file = self.home / "kafka.pid"
        self.stdout_log = self.log_dir / "kafka.out"
        self.server_log = self.log_dir / "server.log"
        self.cache_dir = state / "cache"

    @property
    def address(self) -> str:
        """The client listener, host:port."""
        return f"127.0.0.1:{self.settings.stack_kafka_port}"

    @property
    def version(self) -> str:
        """The Kafka version the pom pins."""
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", self._pom_text())
        return match.group(1) if match else "unknown"

    def _pom_text(self) -> str:
        try:
            return self.settings.stack_kafka_pom.read_text()
        except FileNotFoundError as exc:
            raise LocalStackError(
                f"Kafka pom not found at {self.settings.stack_kafka_pom} (set PACS_STACK_KAFKA_POM)"
            ) from exc

    # ---- jars ----

    def lib_dir(self) -> Path:
        """Where the jars for the current pom are cached."""
        digest = hashlib.sha256(self._pom_text().encode()).hexdigest()[:12]
        return self.cache_dir / f"kafka-lib-{digest}"

    def ensure_jars(self) -> tuple[Path, bool]:
        """Return the jar folder and whether Maven had to resolve it (False: the cache was used)."""
        lib = self.lib_dir()
        if (lib / ".complete").exists():
            logger.info("Kafka %s jars: cached in %s", self.version, lib)
            return lib, False
        if shutil.which("mvn") is None:
            raise LocalStackError("Maven (mvn) is not installed; run `make install` to install it")
        staging = lib.with_name(lib.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        base = [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(self.settings.stack_kafka_pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        logger.info("Kafka %s jars: resolving with Maven (first start only)", self.version)
        # Offline first: a local Maven repository that already holds the jars needs no network.
        result = subprocess.run([*base[:1], "-o", *base[1:]], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            result = subprocess.run(base, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise LocalStackError(
                "Maven could not resolve the Kafka jars:\n" + (result.stdout + result.stderr)[-3000:]
            )
        (staging / ".complete").write_text(self.version + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        return lib, True

    # ---- lifecycle ----

    def running_pid(self) -> int | None:
        """The pid of the broker that ``up`` started, if it is still running."""
        pid = processes.read_pid(self.pid_file)
        if pid is not None and processes.is_running(pid, cmdline_contains=str(self.properties)):
            return pid
        return None

    def start(self) -> bool:
        """Start the broker if it is not running; return True if it was started now.

        Raises:
            LocalStackError: the port is taken by another process, or the broker does not answer in
                time (the message carries the tail of its log).
        """
        if self.running_pid() is not None:
            return False
        for port in (self.settings.stack_kafka_port, self.settings.stack_kafka_controller_port):
            if _port_open(port):
                raise LocalStackError(
                    f"port 127.0.0.1:{port} is in use by a process that `pacs-sync stack up` did not "
                    "start; stop it or set PACS_STACK_KAFKA_PORT / PACS_STACK_KAFKA_CONTROLLER_PORT"
                )
        lib, _ = self.ensure_jars()
        for path in (self.data_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            render_server_properties(
                port=self.settings.stack_kafka_port,
                controller_port=self.settings.stack_kafka_controller_port,
                log_dir=self.data_dir,
            )
        )
        self.log4j.write_text(render_log4j2(self.server_log))
        java = self._java_command(lib)
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = new_kafka_cluster_id()
            fmt = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties)],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise LocalStackError("formatting Kafka's KRaft storage failed:\n" + fmt.stdout + fmt.stderr)
            logger.info("formatted KRaft storage in %s (cluster id %s)", self.data_dir, cluster_id)
        with self.stdout_log.open("ab") as out:
            proc = subprocess.Popen(
                [*java, _MAIN_CLASS, str(self.properties)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        logger.info("Kafka %s starting on %s (pid %d)", self.version, self.address, proc.pid)
        ready = processes.wait_until(
            lambda: self.ping(timeout_s=2.0) is not None or proc.poll() is not None,
            timeout_s=self.settings.stack_start_timeout_s,
        )
        if not ready or proc.poll() is not None or self.ping(timeout_s=5.0) is None:
            raise LocalStackError(
                f"Kafka did not answer on {self.address} within {self.settings.stack_start_timeout_s:.0f} s; "
                f"tail of {self.server_log}:\n{processes.tail(self.server_log)}\n"
                f"tail of {self.stdout_log}:\n{processes.tail(self.stdout_log)}"
            )
        self.wait_for_group_coordinator(timeout_s=self.settings.stack_start_timeout_s)
        return True

    def wait_for_group_coordinator(self, timeout_s: float) -> None:
        """Commit an offset for a throwaway group until the broker accepts it.

        A fresh broker creates its offsets topic on the first consumer group's request; clients that
        join during those seconds see "coordinator not available" and some (Faust's re-keying agents)
        do not recover cleanly. ``up`` returns only once groups work.
        """
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from pacs_sync.kafka_topics import TopicSpec, ensure_topics

        ensure_topics(self.address, [TopicSpec(_READY_TOPIC, 1)])
        consumer = Consumer({"bootstrap.servers": self.address, "group.id": _READY_GROUP, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    consumer.commit(offsets=[TopicPartition(_READY_TOPIC, 0, 0)], asynchronous=False)
                    return
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise LocalStackError(f"Kafka's group coordinator did not come up: {exc}") from exc
                    time.sleep(0.5)
        finally:
            consumer.close()

    def _java_command(self, lib: Path) -> list[str]:
        heap = self.settings.stack_kafka_heap
        return [
            "java",
            f"-Xms{min_heap(heap)}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            f"{lib}/*",
        ]

    def stop(self) -> bool:
        """Stop the broker that ``up`` started (only that one); return True if one was running."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        processes.terminate(pid)
        self.pid_file.unlink(missing_ok=True)
        logger.info("Kafka stopped (pid %d)", pid)
        return True

    def purge(self) -> None:
        """Delete the broker's data and logs; the jar cache stays."""
        shutil.rmtree(self.home, ignore_errors=True)

    def ping(self, timeout_s: float = 3.0) -> str | None:
        """Ask the broker for metadata; return a one-line description, or None if it does not answer."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address, "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except KafkaException:
            return None
        user_topics = [t for t in metadata.topics if not t.startswith("__")]
        return f"Kafka {self.version}, {len(metadata.brokers)} broker, {len(user_topics)} topics"


_READY_TOPIC = "pacs-sync.stack-ready"
_READY_GROUP = "pacs-sync-stack-ready"


def min_heap(heap: str) -> str:
    """Initial heap: half of the maximum (at least 128m), so the broker starts light."""
    size, unit = int(heap[:-1]), heap[-1]
    mb = size * (1024 if unit == "g" else 1)
    return f"{max(128, mb // 2)}m"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
