"""``DeliveryStore``: the run ids a receiver has delivered, kept in SQLite across restarts.

A callback is retried until it is answered 2xx, and a receiver that restarts
forgets what it saw in memory; with a store, a retry of a delivery taken before
the restart is still recognised (and its payload still settles a watch made
after it). Lookups are single primary-key reads on the event loop; writes,
which may wait for the disk, run in a worker thread, one at a time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import anyio.to_thread

from runflow_async._core.errors import ConfigurationError

__all__ = ["DEFAULT_RETAIN", "DeliveryStore"]

DEFAULT_RETAIN = 1_000_000
"""How many deliveries a store remembers; the oldest are forgotten first."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL
)
"""


def _connect(path: Path) -> sqlite3.Connection:
    # Not bound to the opening thread: a receiver may be built outside its loop.
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    # WAL: the loop's reads never wait for the writer thread. NORMAL: a commit
    # survives the process being killed (it is in the log), which is the restart
    # this store is for; only a power cut may lose the last few.
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        db.close()  # not a database, or not writable
        raise
    return db


class DeliveryStore:
    """Delivered run ids and their raw payloads in an SQLite file.

    Args:
        path: The database file; created with its table if missing.
        retain: How many deliveries to keep; older ones are forgotten.

    Raises:
        ConfigurationError: The file cannot be opened as a store.
    """

    def __init__(self, path: str | os.PathLike[str], *, retain: int = DEFAULT_RETAIN) -> None:
        if retain < 1:
            raise ConfigurationError("A delivery store must retain at least 1 delivery.")
        self.path = Path(path)
        self._retain = retain
        self._lock = threading.Lock()  # one write at a time on the writer connection
        with contextlib.ExitStack() as opened:
            try:
                self._writer = _connect(self.path)
                opened.callback(self._writer.close)
                self._writer.execute(_SCHEMA)
                self._reader = _connect(self.path)
            except sqlite3.Error as exc:
                raise ConfigurationError(f"Cannot open the delivery store {path}: {exc}") from exc
            opened.pop_all()  # opened: keep the connections

    def get(self, run_id: str) -> bytes | None:
        """The raw payload delivered for ``run_id``, or None if none was stored."""
        row = self._reader.execute(
            "SELECT payload FROM deliveries WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    async def add(self, run_id: str, payload: bytes) -> None:
        """Remember ``payload`` as ``run_id``'s delivery (the first one stays), off the loop."""
        await anyio.to_thread.run_sync(self._add, run_id, payload)

    def _add(self, run_id: str, payload: bytes) -> None:
        with self._lock:
            cursor = self._writer.execute(
                "INSERT OR IGNORE INTO deliveries (run_id, payload) VALUES (?, ?)",
                (run_id, payload),
            )
            if cursor.rowcount:
                # An indexed range: usually deletes the one row that fell out.
                self._writer.execute(
                    "DELETE FROM deliveries WHERE seq <= ?",
                    ((cursor.lastrowid or 0) - self._retain,),
                )

    def close(self) -> None:
        """Close both connections; idempotent."""
        with self._lock:
            self._reader.close()
            self._writer.close()
