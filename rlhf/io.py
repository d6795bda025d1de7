"""Small file helpers shared by every stage: atomic writes and JSONL with line-numbered errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhf.errors import UserError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (so a rename inside it survives a crash)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines, atomically."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, body)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; a bad line raises UserError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; every row must have the `required` fields (error names file, line and field)."""
    required = tuple(required)
    rows = []
    for lineno, obj in iter_jsonl(path):
        for key in required:
            if key not in obj:
                raise UserError(f"{path}:{lineno}: missing field '{key}' (expected fields: {', '.join(required)})")
        rows.append(obj)
    if not rows:
        raise UserError(f"{path}: no rows (the file is empty)")
    return rows


def truncate_metrics(path: str | Path, step: int) -> None:
    """Resuming from a checkpoint taken at `step`: keep only the rows logged up to it, so each step appears once.
    A torn last line (the process was killed mid-write) is dropped too."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class MetricsLogger:
    """Appends one JSON object per logged step to `metrics.jsonl` (flushed and fsynced per line)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a" if append else "w", encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
