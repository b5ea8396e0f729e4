"""Files under the state dir (``PACS_STATE_DIR``): checked at start-up, written atomically.

Every state file (pid files, the stages' pids, re-snapshot requests, generated secrets) goes through
:func:`write_atomic` or :func:`create_once`: a reader sees the old content or the new, never half a
file, and a failed write (full disk, read-only or missing directory) leaves nothing behind and
raises a :class:`~pacs_sync.errors.ConfigurationError` (PACS-008) naming the path and the setting.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pacs_sync.errors import ConfigurationError

SETTING = "PACS_STATE_DIR"

# Larger than any state file the commands write, so that a start-up probe meets a full disk first.
_PROBE = "pacs-sync state dir probe\n" * 8


def state_dir_error(path: Path, exc: OSError, doing: str) -> ConfigurationError:
    """The operator's error for a state-dir operation that failed with ``exc``."""
    reason = exc.strerror or str(exc)
    return ConfigurationError(
        f"cannot {doing} {path}: {reason} (errno {exc.errno}); the state dir ({SETTING}) must be a "
        "writable directory with free space",
        setting=SETTING,
        path=str(path),
    )


def ensure_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` if needed and prove it takes a file; PACS-008 naming it if not.

    Run before anything starts, so that a command fails with a message instead of half-way through.
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigurationError(
            f"the state dir {state_dir} ({SETTING}) is not a directory", setting=SETTING, path=str(state_dir)
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise state_dir_error(state_dir, exc, "create the state dir") from exc
    probe = state_dir / f".probe.{os.getpid()}"
    try:
        write_atomic(probe, _PROBE)
    except ConfigurationError as exc:
        cause = exc.__cause__
        if not isinstance(cause, OSError):
            raise
        raise state_dir_error(state_dir, cause, "write a file in the state dir") from cause
    with contextlib.suppress(FileNotFoundError):
        probe.unlink()
    return state_dir


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` atomically and durably.

    Ordering: the text goes to a temporary file in the same directory, is fsynced, then renamed over
    ``path`` (``os.replace``, atomic on POSIX) and the directory fsynced. A crash or a failure at any
    step leaves the old file or the new one, never a mix; on failure the temporary file is removed.
    Idempotent: writing the same text again changes nothing a reader can see.
    """
    tmp = _write_temporary(path, text, mode)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise state_dir_error(path, exc, "write") from exc
    _sync_directory(path.parent)


def create_once(path: Path, text: str, *, mode: int = 0o600) -> str:
    """The content of ``path``, creating it with ``text`` if it does not exist yet (a generated secret).

    The file appears complete or not at all (written and fsynced aside, then hard-linked into place,
    which fails if another process created it meanwhile: the first writer wins and everyone reads its
    content). A file cut short by an earlier version cannot be told from a short secret; the callers'
    secrets are fixed-length and :func:`create_once` never writes a partial one.
    """
    if not path.exists():
        tmp = _write_temporary(path, text, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise state_dir_error(path, exc, "create") from exc
        finally:
            _discard(tmp)
        _sync_directory(path.parent)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise state_dir_error(path, exc, "read") from exc


def _write_temporary(path: Path, text: str, mode: int) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise state_dir_error(path, exc, "write") from exc
    tmp = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        _discard(tmp)
        raise state_dir_error(path, exc, "write") from exc
    return tmp


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _sync_directory(directory: Path) -> None:
    # The rename is durable once the directory is; best effort (some file systems refuse it).
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
