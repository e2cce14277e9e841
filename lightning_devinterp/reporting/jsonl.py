"""The JSON-lines sink: every record on disk as soon as it exists."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no check for a second writer
    fcntl = None  # type: ignore[assignment]


class JsonlWriter:
    """Appends records to a JSON-lines file, flushed after each one.

    Args:
        path: the file; parent folders are created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    @property
    def lock_path(self) -> Path:
        """``<file>.lock``: held by the process writing the file, with its pid inside."""
        return self.path.with_name(self.path.name + ".lock")

    def claim(self) -> None:
        """Hold :attr:`lock_path` until :meth:`release` (or this process ends), so that a
        second run writing the same file at the same time is refused instead of mixing its
        records into this one's."""
        if fcntl is None or self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise RuntimeError(
                f"{self.path} is being written by another training run (process {holder}). "
                "Give each run that trains at the same time its own folder: "
                "Trainer(default_root_dir=...), a logger (each version is a folder of its own) "
                "or the monitor's output_dir=..."
            ) from None
        except OSError:  # a file system without locks (some network mounts): no check
            lock.close()
            return
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        """Let another run write the file (the lock file stays behind: only a held lock counts)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def rewrite(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Make the file hold exactly ``records``, keeping any other content in a backup.

        A resumed run calls this with the history restored from its checkpoint, so the file
        and the history agree; lines the history does not have are moved, not lost.
        """
        records = [dict(r) for r in records]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [_dumps(r) for r in records]
        if self.path.exists():
            kept = set(lines)
            old = self.path.read_text().splitlines()
            if any(line not in kept for line in old if line.strip()):
                backup = self.path.with_suffix(f".{time.strftime('%Y%m%d-%H%M%S')}.bak")
                self.path.replace(backup)
        self.path.write_text("".join(line + "\n" for line in lines))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(_dumps(record) + "\n")
            f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(_finite(record), sort_keys=True)


def _finite(value: Any) -> Any:
    """NaN/Inf become None so the file stays valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
