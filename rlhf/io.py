"""Small file helpers shared by every stage: output checks before any work, atomic writes, and JSONL with
line-numbered errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from rlhf.errors import UserError


def _writable(folder: Path) -> bool:
    """Can this process create a file in `folder`? Tried for real (a temp file, removed at once): permission bits
    say nothing for root, and a read-only mount refuses everyone."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rlhf-write-check.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def check_output(path: str | Path, kind: Literal["dir", "file"], label: str = "config field 'out'") -> Path:
    """Before any work: can `path` be written as a folder (kind 'dir') or a file ('file')? Otherwise a one-line
    UserError naming `label` (the field or flag), the path and the fix: a file where a folder is expected (or the
    reverse), a parent that is a file, a folder that cannot be written. Nothing is created. Returns the path."""
    p = Path(path).expanduser()
    want = "folder" if kind == "dir" else "file"
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise UserError(f"{label}: {p} is a file, not a folder; pass a folder path (it is created if missing)")
        if kind == "file" and p.is_dir():
            raise UserError(f"{label}: {p} is a folder, not a file; pass a file path (e.g. {p / 'out.jsonl'})")
        target = p if kind == "dir" else p.parent
    else:
        target = p.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise UserError(f"{label}: cannot create the {want} {p}: {target} is a file, not a folder; choose "
                            "another path")
    if not _writable(target):
        raise UserError(f"{label}: cannot write {p}: {target} is read-only (or not writable by this user); choose "
                        "a writable path")
    return p


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


class open_text:  # noqa: N801 - used like open()
    """`with open_text(path) as f: for line in f:` reads a UTF-8 text file like `path.open(encoding="utf-8")`, but a
    missing file, a folder, an unreadable file or a line that is not UTF-8 is a one-line UserError naming the file
    (and the line) instead of a traceback. Lines are decoded one by one, so the line named is the bad one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: a folder, not a file; pass the file itself")
        if not self.path.exists():
            raise UserError(f"{self.path}: file not found")
        try:
            self._f = self.path.open("rb")
        except OSError as e:
            raise UserError(f"{self.path}: cannot read it ({e.strerror or e})") from None

    def __enter__(self) -> open_text:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __iter__(self) -> Iterator[str]:
        for lineno, raw in enumerate(self._f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                kind = " (this is a Parquet file, not JSONL)" if lineno == 1 and raw.startswith(b"PAR1") else ""
                raise UserError(f"{self.path}:{lineno}: not UTF-8 text{kind} (byte {raw[e.start:e.start + 1]!r} at "
                                f"column {e.start + 1}); pass a UTF-8 JSONL file") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; a bad line raises UserError naming file and line."""
    path = Path(path)
    with open_text(path) as f:
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
