"""Import preference files into the store: each record becomes a task (pairwise for 2 responses, else ranking)
plus one judgment by the pseudo-user "import:<file name>", so imported and collected labels export the same way.
Re-importing a file adds nothing new (judgments are keyed by a hash of their content).

Layouts and their rules are in rlhf/data/preferences.py (hh, trl, ultrafeedback raw and binarized). A multi-turn
prompt is stored as its rendered text (what the store de-duplicates and shows) with the messages themselves in
the task's source ("prompt_messages"), from which the export writes conversational rows. A tie (equal scores) is
stored as the store's tie: a pairwise "tie" judgment, a vote of 0 that exports no pair."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlhf.data.preferences import ImportReport, read_preference_file
from rlhf.errors import UserError
from rlhf.labeling.store import Store, TaskSpec


def import_file(
    store: Store, path: str | Path, *, fmt: str = "auto", strict: bool = False, overlap: int = 0
) -> tuple[ImportReport, int, int]:
    """Returns (report of rows read/parsed/rejected, judgments imported, judgments already present)."""
    path = Path(path)
    report = read_preference_file(path, fmt)
    if strict and report.errors:
        raise UserError(
            f"{len(report.errors)} of {report.rows_read} rows rejected, nothing imported (--strict); first: {report.errors[0]}"
        )
    if report.rows_read == 0:
        raise UserError(f"{path}: no rows")
    items = []
    for rec in report.records:
        kind = "pairwise" if len(rec.responses) == 2 else "ranking"
        source = {"file": path.name, "location": rec.location, "format": report.format, "split": rec.split}
        if rec.prompt_id is not None:
            source["prompt_id"] = rec.prompt_id
        if rec.prompt_messages is not None:
            source["prompt_messages"] = rec.prompt_messages
        spec = TaskSpec(kind, rec.prompt, rec.responses, source, overlap)
        digest = hashlib.sha256(json.dumps([rec.prompt, rec.responses, rec.ranks]).encode("utf-8")).hexdigest()
        items.append((spec, rec.ranks, f"import-{digest[:40]}"))
    imported, duplicates = store.import_records(f"import:{path.name}", items)
    return report, imported, duplicates
