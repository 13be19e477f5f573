"""One process at a time per dataset folder, and no leftovers from a killed one.

Two runs on one folder would both submit its pending items and bill them twice,
so a run holds an exclusive ``flock`` on ``DIR/.runflow/lock`` (released by the
OS when the process dies, even by ``kill -9``). Holding it, the run can also
delete the temporary files a killed run left mid-download: nobody else writes
them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from runflow_async._core.errors import ConfigurationError
from runflow_async._http.download import TEMP_SUFFIX

__all__ = ["exclusive_folder"]


@contextlib.contextmanager
def exclusive_folder(out_dir: Path) -> Iterator[None]:
    """Hold the folder's lock for the block, after removing stale temporary files.

    Raises:
        ConfigurationError: Another process is working on the folder.
    """
    lock_path = out_dir / ".runflow" / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(
                f"Another runflow-async process is working on {out_dir}; wait for it to "
                "finish or stop it (two runs on one folder would bill items twice)."
            ) from None
        for stale in out_dir.glob(f".*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # closing releases the lock
