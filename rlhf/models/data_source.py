"""Where a stage's rows come from: a JSONL file, a folder written by `datasets` `save_to_disk`, or a hub dataset
id `ORG/NAME[:split]` loaded with `datasets.load_dataset` (HF_HUB_OFFLINE respected: then only the cache).

    --data runs/x/preferences.jsonl      --data data/hh_disk:test      --data Anthropic/hh-rlhf:train

Every row is a dict; a hub or disk row is reported as 'SPEC row N' where a JSONL row is 'FILE:LINE'.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.io import iter_jsonl


def _split(spec: str) -> tuple[str, str | None]:
    """'name:split' -> (name, split); a Windows drive or a plain path keeps its colon-free form."""
    name, sep, split = spec.rpartition(":")
    if sep and name and split and "/" not in split and not Path(spec).exists():
        return name, split
    return spec, None


def iter_rows(spec: str | Path) -> Iterator[tuple[int | str, dict[str, Any]]]:
    """Yield (line number or 'row N', row) from a JSONL file, a save_to_disk folder or a hub dataset."""
    s = str(spec)
    path = Path(s)
    if path.is_file() or s.endswith((".jsonl", ".json")):
        yield from iter_jsonl(path)
        return
    name, split = _split(s)
    for i, row in enumerate(_load(name, split), start=1):
        yield f"row {i}", dict(row)


def read_rows(spec: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All rows; each must have the `required` fields (the error names the source, row and field)."""
    required = tuple(required)
    rows = []
    for where, row in iter_rows(spec):
        for key in required:
            if key not in row:
                loc = f"{spec}:{where}" if isinstance(where, int) else f"{spec} {where}"
                raise UserError(f"{loc}: missing field '{key}' (expected fields: {', '.join(required)})")
        rows.append(row)
    if not rows:
        raise UserError(f"{spec}: no rows (empty)")
    return rows


def where(spec: str | Path, loc: int | str) -> str:
    """'FILE:LINE' for a JSONL line, 'SPEC row N' for a dataset row."""
    return f"{spec}:{loc}" if isinstance(loc, int) else f"{spec} {loc}"


def _load(name: str, split: str | None) -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(f"'{name}' is not a file; reading datasets needs the datasets package (pip install "
                        "datasets)") from None
    folder = Path(name)
    if folder.is_dir():
        try:
            ds = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"{name}: a folder but not one written by datasets' save_to_disk ({e})") from None
        return _pick(ds, name, split)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"{name}: no such file or folder (a hub dataset id looks like ORG/NAME[:split])")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types (connection, not found, config): one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        hint = (" (HF_HUB_OFFLINE is set: only cached datasets load; download it first or save it with "
                "save_to_disk / as JSONL and pass that)" if offline else
                " (no network? save it with save_to_disk or as JSONL and pass the path)")
        raise UserError(f"could not load dataset '{name}' split '{split or 'train'}': {msg}{hint}") from None
    return ds


def _pick(ds: Any, name: str, split: str | None) -> Any:
    """A DatasetDict needs a split (the only one if there is one); a Dataset takes none."""
    import datasets

    splits = list(ds.keys()) if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)) else None
    if splits is None:
        if split:
            raise UserError(f"{name}: this saved dataset has no splits; drop ':{split}'")
        return ds
    if split is None:
        if len(splits) != 1:
            raise UserError(f"{name}: choose a split with {name}:SPLIT (one of {', '.join(splits)})")
        split = splits[0]
    if split not in splits:
        raise UserError(f"{name}: no split '{split}' (one of {', '.join(splits)})")
    return ds[split]
