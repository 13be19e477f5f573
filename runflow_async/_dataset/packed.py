"""Packed shards: WebDataset tar files and Parquet files, finalised atomically.

A shard is written from the journal's items in it and their staged images
(:mod:`runflow_async._dataset.shards`) under a temporary name, fsynced, renamed
to its final name and the folder fsynced; only then are its staged images
removed. So a shard file is complete or absent, and a missing one is rebuilt.

* ``webdataset``: ``shard-000000.tar`` with ``KEY-N.EXT`` + ``KEY-N.json`` per image.
* ``parquet``: ``train-000000.parquet``: an ``image`` column in the Hugging Face
  ``Image`` layout (``{bytes, path}``) and the manifest's columns, with the
  ``datasets`` features in the schema's metadata so ``image`` decodes as an image.
  (Named ``train-*`` so ``load_dataset("parquet", data_dir=DIR)`` takes the
  shards and not the folder's JSON files.)
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runflow_async._core.errors import ConfigurationError
from runflow_async._dataset.journal import Journal
from runflow_async._dataset.shards import DatasetFormat, Layout
from runflow_async._http.download import TEMP_SUFFIX

__all__ = ["finalise", "reconcile_packed", "require_writer", "shard_name"]

_INTS = ("seed", "width", "height")


def shard_name(fmt: DatasetFormat, shard: int) -> str:
    """The file name of packed ``shard``."""
    if fmt is DatasetFormat.PARQUET:
        return f"train-{shard:06d}.parquet"
    return f"shard-{shard:06d}.tar"


def require_writer(fmt: DatasetFormat) -> None:
    """Check, before anything is sent, that ``fmt`` can be written here.

    Raises:
        ConfigurationError: Parquet without ``pyarrow`` installed.
    """
    if fmt is DatasetFormat.PARQUET:
        try:
            import pyarrow  # noqa: F401
        except ImportError:  # pragma: no cover - pyarrow is in the dev extra
            raise ConfigurationError(
                "--format parquet needs pyarrow: pip install 'runflow-async[parquet]'"
            ) from None


def finalise(out_dir: Path, journal: Journal, layout: Layout, shard: int) -> None:
    """Write packed ``shard`` from its items' staged images, atomically; unstage them."""
    staging = layout.images_dir(out_dir)
    samples = [
        (row, staging / row["file_name"])
        for entry in journal.iter_shard(shard)
        for row in (json.loads(line) for line in entry.files)
    ]
    dest = out_dir / shard_name(layout.format, shard)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        with tmp.open("xb") as fh:
            if layout.format is DatasetFormat.PARQUET:
                _write_parquet(fh, samples)
            else:
                _write_tar(fh, samples)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out_dir)
    for _, path in samples:
        path.unlink(missing_ok=True)


def reconcile_packed(out_dir: Path, journal: Journal, layout: Layout) -> None:
    """Rebuild every shard the journal names whose file is missing; unstage the rest."""
    staging = layout.images_dir(out_dir)
    for shard in sorted(journal.shard_images()):
        if not (out_dir / shard_name(layout.format, shard)).exists():
            finalise(out_dir, journal, layout, shard)
            continue
        for entry in journal.iter_shard(shard):  # a kill between rename and unstaging
            for line in entry.files:
                (staging / json.loads(line)["file_name"]).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sample_json(row: dict[str, Any]) -> bytes:
    sample = dict(row)
    inputs = json.loads(str(row.get("parameters") or "{}")).get("image_urls")
    if inputs is not None:
        sample["inputs"] = inputs
    return json.dumps(sample, sort_keys=True).encode()


def _write_tar(fh: io.BufferedWriter, samples: Sequence[tuple[dict[str, Any], Path]]) -> None:
    with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row, path in samples:
            name = str(row["file_name"])
            stem = name.rsplit(".", 1)[0]
            tar.add(path, arcname=name, recursive=False)
            meta = _sample_json(row)
            info = tarfile.TarInfo(f"{stem}.json")
            info.size = len(meta)
            info.mtime = int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(meta))


def _write_parquet(fh: io.BufferedWriter, samples: Sequence[tuple[dict[str, Any], Path]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = sorted({name for row, _ in samples for name in row} | {"file_name"})
    fields = [pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(c, pa.int64() if c in _INTS else pa.string()) for c in columns]
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for c in columns:
        features[c] = {"dtype": "int64" if c in _INTS else "string", "_type": "Value"}
    schema = pa.schema(fields).with_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    data: dict[str, list[Any]] = {
        "image": [{"bytes": path.read_bytes(), "path": row["file_name"]} for row, path in samples]
    }
    for c in columns:
        data[c] = [_cell(row.get(c), as_int=c in _INTS) for row, _ in samples]
    pq.write_table(pa.table(data, schema=schema), fh)


def _cell(value: object, *, as_int: bool) -> object:
    if value is None or as_int:
        return value
    return value if isinstance(value, str) else json.dumps(value)
