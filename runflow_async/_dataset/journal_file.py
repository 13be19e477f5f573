"""Opening a journal's SQLite file: private permissions, the schema, upgrades of older ones."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from runflow_async._core.errors import RunflowError

__all__ = ["SCHEMA_VERSION", "JournalError", "connect"]

SCHEMA_VERSION = 5

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE items (key TEXT PRIMARY KEY, ordinal INTEGER NOT NULL, kind TEXT NOT NULL,"
    " state TEXT NOT NULL, client_ref TEXT, run_id TEXT, estimate_usd TEXT, cost_usd TEXT,"
    " error_type TEXT, error TEXT, files TEXT NOT NULL DEFAULT '[]',"
    " attempts INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,"
    " prior_cost_usd TEXT NOT NULL DEFAULT '0', retries INTEGER NOT NULL DEFAULT 0,"
    " reserved_usd TEXT, batch_id TEXT, shard INTEGER)",
    "CREATE INDEX items_by_ordinal ON items (ordinal)",
)
# Each step upgrades a journal of the version before it (index 0: 1 -> 2).
_MIGRATIONS = (
    "ALTER TABLE items ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE items ADD COLUMN reserved_usd TEXT",
    "ALTER TABLE items ADD COLUMN batch_id TEXT",
    "ALTER TABLE items ADD COLUMN shard INTEGER",  # 5: the shard holding the item
)


class JournalError(RunflowError):
    """The journal cannot be used (not a journal, or written by a newer version)."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if need be) the journal at ``path``, private, at the current schema.

    Raises:
        JournalError: The file is not a journal, or a newer version wrote it.
    """
    _make_private(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        _prepare(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # lets a `status` reader wait out a write
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
                (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            else:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                version = SCHEMA_VERSION
            if version < SCHEMA_VERSION:  # an older runflow-async wrote it: upgrade in place
                for statement in _MIGRATIONS[version - 1 :]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                version = SCHEMA_VERSION
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path} is not a usable journal: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{path} was written by a newer runflow-async (journal schema {version}; "
            f"this version reads up to {SCHEMA_VERSION}); upgrade runflow-async"
        )


def _make_private(path: Path) -> None:
    """Create the journal ``0600`` (SQLite gives its ``-wal``/``-shm`` the same mode).

    ``fchmod``, not the ``open`` mode alone: a umask can only take bits away,
    and an older journal may have been created readable by others.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
