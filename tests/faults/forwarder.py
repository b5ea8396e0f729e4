"""A TCP forwarder to put between a stage and a server, to take the server away and give it back.

The source (the emulated PACS database) and the target share one PostgreSQL server here, so the
"source unreachable" scenario cannot stop PostgreSQL; instead the producer connects through this
forwarder (``PACS_DB_PORT`` = its port) and the test closes it: the port refuses new connections and
every forwarded connection is cut, exactly what a server that went away looks like to a client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpForwarder:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` while open."""

    def __init__(self, target_host: str, target_port: int) -> None:
        """Pick a free port; nothing listens until :meth:`open`."""
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.accepted = 0
        self.cut = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Whether the port accepts connections."""
        return self._listener is not None

    def open(self) -> None:
        """Listen (again) on the same port and forward every connection."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Refuse new connections and cut every forwarded one; returns how many were cut."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        cut = len(live) // 2
        self.cut += cut
        return cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._live.update((client, upstream))
            self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._live.discard(src)
                self._live.discard(dst)
