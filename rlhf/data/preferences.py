"""Preference file formats: reading common public formats, and the export format the reward stage reads.

Import (local files only): JSONL, Parquet, or a folder written by `datasets` `save_to_disk`, in one of
  hh             Anthropic HH: {"chosen": transcript, "rejected": transcript}, transcripts
                 "\\n\\nHuman: ... \\n\\nAssistant: ..." that differ only in the last Assistant turn.
                 prompt = the transcript before the last "\\n\\nAssistant:" (kept verbatim, so
                 prompt + "\\n\\nAssistant: " + chosen rebuilds the chosen transcript).
  trl            TRL preference: {"prompt", "chosen", "rejected"}, plain strings or conversational lists of
                 {"role", "content"} messages (a missing prompt with conversational chosen/rejected = TRL's
                 "implicit prompt": the shared leading messages). Messages are rendered to text: a single
                 message is its content, several are "Role: content" blocks separated by blank lines.
  ultrafeedback  either layout of UltraFeedback, row by row:
                 raw: {"instruction" | "prompt", "completions": [{"response" | "text", "overall_score" |
                 "fine-grained_score" | "rating" | "score"}, ...]}: 2..9 completions ranked by score
                 (higher is better, equal scores tie);
                 binarized (HuggingFaceH4/ultrafeedback_binarized): {"prompt": str, "prompt_id"?, "chosen":
                 [messages], "rejected": [messages], "score_chosen", "score_rejected"}, chosen/rejected repeating
                 the conversation: the shared leading turns are the prompt (one user turn: the `prompt` string;
                 several turns: kept as messages), the one assistant turn after them is each response; equal
                 scores are a tie, score_chosen < score_rejected is refused.
`--format auto` takes the layout of the first row that has one; a later row that is bad in that layout but good in
another is a mixed file, refused as a whole (UserError naming the line and the layout it looked like).
Every row becomes a PreferenceRecord (prompt, responses, rank per response with 1 = best) or a RowError naming
file, line (or row) and field. Nothing is dropped silently: the ImportReport counts rows read, parsed and
rejected, with the reasons.

Export (written by `rlhf label export`, read by the reward stage with `read_preferences`): JSONL rows
  {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages, "agreement": float in [0, 1],
   "margin": float (optional), "group_id": str (optional, shared by the pairs of one ranking),
   "split": "train" | "heldout" (optional), "weight": float in [0, 1] (optional, `--weight reliability`),
   ...extra keys allowed (e.g. task_id, n_votes)}
(a conversational prompt: prompt, chosen and rejected are all lists of {"role", "content"} messages)
and `<stem>.meta.json` next to it (`read_preferences_meta`), with e.g. "bayes_accuracy" for simulated labels.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.io import iter_jsonl, open_text, write_jsonl

FORMATS = ("hh", "trl", "ultrafeedback")
MAX_RESPONSES = 9
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TEXT_KEYS = ("response", "text", "completion", "output")
SCORE_KEYS = ("overall_score", "fine-grained_score", "rating", "score")
HELDOUT_SPLITS = {"test", "validation", "valid", "eval", "dev", "heldout", "held_out"}


@dataclass(frozen=True)
class RowError:
    location: str  # "file:line" (JSONL) or "file:row N" (Parquet, datasets)
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: field '{self.field}': {self.reason}"


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: str  # text (conversations rendered by `render_messages`, for display and de-duplication)
    responses: list[str]
    ranks: list[int]  # one per response, 1 = best, ties share a rank
    location: str
    split: str | None = None  # "train" / "heldout" from a datasets split name, else None
    prompt_messages: list[dict] | None = None  # a multi-turn prompt, kept as {"role", "content"} messages
    prompt_id: str | None = None  # the row's own prompt_id (UltraFeedback, rlhf sample), kept with the task


@dataclass
class ImportReport:
    path: str
    format: str | None
    rows_read: int = 0
    records: list[PreferenceRecord] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(f"{e.field}: {e.reason}" for e in self.errors)

    def summary(self, max_errors: int = 20) -> list[str]:
        lines = [
            f"{self.path}: format {self.format or 'unknown'}: {self.rows_read} rows read, "
            f"{len(self.records)} parsed, {len(self.errors)} rejected"
        ]
        lines += [f"  rejected: {e}" for e in self.errors[:max_errors]]
        if len(self.errors) > max_errors:
            lines.append(f"  ... and {len(self.errors) - max_errors} more; by reason:")
            lines += [f"    {n} x {reason}" for reason, n in self.reasons().most_common()]
        return lines


class RowRejected(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------
# Reading rows from files


def _split_name(name: str | None) -> str | None:
    if name is None:
        return None
    if name == "train":
        return "train"
    return "heldout" if name.lower() in HELDOUT_SPLITS else None


def iter_rows(path: str | Path) -> Iterator[tuple[str, str | None, Any]]:
    """Yield (location, split, row) for every row of a JSONL file, a Parquet file or a `datasets` folder.
    A JSONL line that is not valid JSON is yielded as a RowRejected in place of the row."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: not found")
    if p.is_dir():
        if not any((p / n).exists() for n in ("dataset_dict.json", "dataset_info.json", "state.json")):
            raise UserError(f"{p} is a folder but not a `datasets` save_to_disk folder (no dataset_info.json)")
        import datasets  # lazy: slow to import

        ds = datasets.load_from_disk(str(p))
        parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
        for name, d in parts:
            for n, row in enumerate(d, start=1):
                yield (f"{p}[{name}]:row {n}" if name else f"{p}:row {n}"), _split_name(name), row
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        try:  # streamed batch by batch; a damaged file fails at its footer or at a bad page
            for batch in pq.ParquetFile(p).iter_batches():
                for row in batch.to_pylist():
                    n += 1
                    yield f"{p}:row {n}", None, row
        except (OSError, ValueError, TypeError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
            raise UserError(f"{p}: not a readable Parquet file ({' '.join(str(e).split())[:200]}); check or "
                            "re-export the file") from None
    else:
        with open_text(p) as f:  # a non-UTF-8 line: one error naming the file and line
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row: Any = json.loads(line)
                except json.JSONDecodeError as e:
                    row = RowRejected("(line)", f"not valid JSON ({e.msg} at column {e.colno})")
                yield f"{p}:{lineno}", None, row


def detect_format(row: Any) -> str | None:
    """The layout a row looks like (None: none). The rules are disjoint, so every listed layout is recognised:
    completions -> ultrafeedback (raw); score_chosen/score_rejected, or a string prompt with message-list
    chosen/rejected -> ultrafeedback (binarized); no prompt and HH transcripts -> hh; other chosen/rejected -> trl."""
    if not isinstance(row, dict):
        return None
    if "completions" in row:
        return "ultrafeedback"
    if "chosen" in row and "rejected" in row:
        chosen = row["chosen"]
        if "score_chosen" in row or "score_rejected" in row:
            return "ultrafeedback"
        if isinstance(row.get("prompt"), str) and isinstance(chosen, list):
            return "ultrafeedback"
        if "prompt" not in row and isinstance(chosen, str) and ASSISTANT in chosen:
            return "hh"
        return "trl"
    return None


def _mixed_layout(row: dict, fmt: str, location: str, first: str | None) -> None:
    """A row bad in the file's layout `fmt` but good in another: the file mixes layouts; refuse it whole."""
    other = detect_format(row)
    if other is None or other == fmt:
        return
    try:
        PARSERS[other](row)
    except RowRejected:
        return  # bad in every layout: an ordinary bad row of this file
    since = f"from {first}" if first else "--format"
    raise UserError(
        f"{location}: this row is a valid {other} row (fields {', '.join(sorted(row))}), but the file's layout is "
        f"{fmt} ({since}): a file mixing layouts is refused, nothing imported; split it into one file per layout "
        f"(or import this file with --format {other} if it is all {other})"
    )


def read_preference_file(path: str | Path, fmt: str = "auto") -> ImportReport:
    """Parse a whole file; the format is `fmt` or detected from the first row that looks like one."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    report = ImportReport(str(path), None if fmt == "auto" else fmt)
    first = None  # where the layout was detected
    for location, split, row in iter_rows(path):
        report.rows_read += 1
        try:
            if isinstance(row, RowRejected):
                raise row
            if not isinstance(row, dict):
                raise RowRejected("(row)", f"expected a JSON object, got {type(row).__name__}")
            if report.format is None:
                report.format = detect_format(row)
                if report.format is None:
                    raise RowRejected(
                        "(row)",
                        "unknown format: expected chosen/rejected (HH, TRL, binarized UltraFeedback) or completions "
                        f"(UltraFeedback) fields, got {', '.join(sorted(row)) or 'no fields'}",
                    )
                first = location
            try:
                prompt, responses, ranks = PARSERS[report.format](row)
            except RowRejected:
                _mixed_layout(row, report.format, location, first)
                raise
            messages = prompt if isinstance(prompt, list) else None
            text = render_messages(messages) if messages else prompt
            pid = row.get("prompt_id")
            pid = str(pid) if isinstance(pid, (str, int)) and not isinstance(pid, bool) else None
            report.records.append(PreferenceRecord(text, responses, ranks, location, split, messages, pid))
        except RowRejected as e:
            report.errors.append(RowError(location, e.field, e.reason))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Row parsers: row -> (prompt, responses, ranks); raise RowRejected(field, reason)


def _hh_split(text: Any, name: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise RowRejected(name, f"expected a transcript string, got {type(text).__name__}")
    idx = text.rfind(ASSISTANT)
    if idx < 0:
        raise RowRejected(name, "no '\\n\\nAssistant:' turn (expected '\\n\\nHuman: ... \\n\\nAssistant: ...')")
    prefix, reply = text[:idx], text[idx + len(ASSISTANT) :]
    if HUMAN not in prefix:
        raise RowRejected(name, "no '\\n\\nHuman:' turn before the last Assistant turn")
    return prefix, reply[1:] if reply.startswith(" ") else reply


def parse_hh(row: dict) -> tuple[str, list[str], list[int]]:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowRejected(key, "missing")
    prompt, chosen = _hh_split(row["chosen"], "chosen")
    prompt_r, rejected = _hh_split(row["rejected"], "rejected")
    if prompt != prompt_r:
        raise RowRejected("rejected", "the conversation before the last Assistant turn differs from chosen's")
    return prompt, *_pair(chosen, rejected)


def _pair(chosen: str, rejected: str) -> tuple[list[str], list[int]]:
    if chosen == rejected:
        raise RowRejected("rejected", "identical to chosen: no preference to learn")
    return [chosen, rejected], [1, 2]


def _messages(value: Any, name: str) -> list[dict]:
    for n, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowRejected(f"{name}[{n}]", "expected a message {'role': str, 'content': str}")
    return value


def render_messages(messages: list[dict]) -> str:
    """One message: its content; several: 'Role: content' blocks separated by blank lines."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def parse_trl(row: dict) -> tuple[str, list[str], list[int]]:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowRejected(key, "missing")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            raise RowRejected("prompt", "missing (plain TRL rows need prompt, chosen, rejected; HH transcripts: hh)")
        if not isinstance(prompt, str):
            raise RowRejected("prompt", f"expected a string like chosen and rejected, got {type(prompt).__name__}")
        return prompt, *_pair(chosen, rejected)
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RowRejected("chosen", "chosen and rejected must both be strings or both be lists of messages")
    chosen_m, rejected_m = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if prompt is None:  # implicit prompt: the shared leading messages
        n = 0
        while n < min(len(chosen_m), len(rejected_m)) and chosen_m[n] == rejected_m[n]:
            n += 1
        prompt_m, chosen_m, rejected_m = chosen_m[:n], chosen_m[n:], rejected_m[n:]
    elif isinstance(prompt, list):
        prompt_m = _messages(prompt, "prompt")
    else:
        raise RowRejected("prompt", "expected a list of messages like chosen and rejected")
    if not prompt_m:
        raise RowRejected("prompt", "empty: no messages before the responses")
    if not chosen_m or not rejected_m:
        raise RowRejected("chosen" if not chosen_m else "rejected", "no response messages after the prompt")
    return render_messages(prompt_m), *_pair(render_messages(chosen_m), render_messages(rejected_m))


def _score(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise RowRejected(name, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RowRejected(name, f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise RowRejected(name, f"expected a finite number, got {value!r}")
    return x


def parse_ultrafeedback(row: dict) -> tuple[str | list[dict], list[str], list[int]]:
    if "completions" not in row and ("chosen" in row or "rejected" in row):
        return parse_ultrafeedback_binarized(row)
    key = "instruction" if "instruction" in row else "prompt"
    prompt = row.get(key)
    if not isinstance(prompt, str):
        raise RowRejected(key, "missing or not a string (expected instruction or prompt)")
    comps = row.get("completions")
    if not isinstance(comps, list) or not 2 <= len(comps) <= MAX_RESPONSES:
        n = len(comps) if isinstance(comps, list) else type(comps).__name__
        raise RowRejected("completions", f"expected a list of 2..{MAX_RESPONSES} completions, got {n}")
    texts, scores = [], []
    for n, c in enumerate(comps):
        if not isinstance(c, dict):
            raise RowRejected(f"completions[{n}]", "expected an object with a response and a score")
        tkey = next((k for k in TEXT_KEYS if k in c), None)
        skey = next((k for k in SCORE_KEYS if c.get(k) is not None), None)
        if tkey is None or not isinstance(c[tkey], str):
            raise RowRejected(f"completions[{n}].response", f"missing or not a string (one of {', '.join(TEXT_KEYS)})")
        if skey is None:
            raise RowRejected(f"completions[{n}].overall_score", f"missing (one of {', '.join(SCORE_KEYS)})")
        texts.append(c[tkey])
        scores.append(_score(c[skey], f"completions[{n}].{skey}"))
    ranks = [1 + sum(t > s for t in scores) for s in scores]  # higher score = better; equal scores share a rank
    return prompt, texts, ranks


def parse_ultrafeedback_binarized(row: dict) -> tuple[str | list[dict], list[str], list[int]]:
    """Binarized UltraFeedback: the prompt is the `prompt` string when the shared turns are one user turn, else the
    shared turns as messages; each response is the one assistant turn after them; ranks from the two scores."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise RowRejected("prompt", "missing or not a string (binarized UltraFeedback: the user's request as text)")
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), list):
            raise RowRejected(key, "expected a list of messages [{'role', 'content'}, ...] that repeats the "
                              f"conversation, got {type(row.get(key)).__name__}")
    chosen, rejected = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    shared = chosen[:n]
    if not any(m["role"] == "user" for m in shared):
        raise RowRejected("chosen[0]", "chosen and rejected share no user turn; both must repeat the conversation "
                          "(at least the user turn) before their assistant turn")
    if prompt.strip() not in {m["content"].strip() for m in shared if m["role"] == "user"}:
        raise RowRejected("prompt", "matches none of the user turns that chosen and rejected share; fix the prompt "
                          "or the messages")
    responses = []
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        rest = msgs[n:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise RowRejected(f"{key}[{n}]", f"expected one assistant turn after the {n} shared turns, got roles "
                              f"{[m['role'] for m in rest]}; end both conversations with their one differing answer")
        responses.append(rest[0]["content"])
    sc, sr = row.get("score_chosen"), row.get("score_rejected")
    if (sc is None) != (sr is None):
        missing = "score_chosen" if sc is None else "score_rejected"
        raise RowRejected(missing, "missing while the other score is given; give both scores or neither")
    if sc is None:
        ranks = [1, 2]  # no scores: the row's own chosen/rejected
    else:
        sc, sr = _score(sc, "score_chosen"), _score(sr, "score_rejected")
        if sc < sr:
            raise RowRejected("score_chosen", f"{sc:g} is below score_rejected {sr:g}, contradicting chosen/rejected; "
                              "swap the two conversations or fix the scores")
        ranks = [1, 1] if sc == sr else [1, 2]  # equal scores: a tie (the store's tie: no exported pair)
    if responses[0] == responses[1]:
        raise RowRejected("rejected", "identical to chosen: no preference to learn")
    single = len(shared) == 1
    return (prompt if single else shared), responses, ranks


PARSERS = {"hh": parse_hh, "trl": parse_trl, "ultrafeedback": parse_ultrafeedback}


# ---------------------------------------------------------------------------------------------------------------
# The export format


def check_pair_row(row: Any, where: str) -> dict:
    """Validate one exported preference row; UserError names the place and the field."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    conversational = isinstance(row.get("prompt"), list)
    for key in ("prompt", "chosen", "rejected"):
        value = row.get(key)
        if conversational:
            if not isinstance(value, list) or not value or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value):
                raise UserError(f"{where}: field '{key}' must be a list of messages {{'role', 'content'}} (the prompt "
                                "is conversational)")
        elif not isinstance(value, str):
            raise UserError(f"{where}: field '{key}' must be a string (or, for all three, a list of messages)")
    weight = row.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1):
        raise UserError(f"{where}: field 'weight' must be a number in [0, 1], got {weight!r}")
    agreement = row.get("agreement")
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 <= agreement <= 1:
        raise UserError(f"{where}: field 'agreement' must be a number in [0, 1], got {agreement!r}")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin)):
        raise UserError(f"{where}: field 'margin' must be a finite number, got {margin!r}")
    if row.get("group_id") is not None and not isinstance(row["group_id"], str):
        raise UserError(f"{where}: field 'group_id' must be a string")
    if row.get("split") is not None and row["split"] not in ("train", "heldout"):
        raise UserError(f"{where}: field 'split' must be 'train' or 'heldout', got {row['split']!r}")
    return row


def write_preferences(path: str | Path, rows: list[dict]) -> Path:
    """Validate and write exported preference rows (atomic)."""
    for n, row in enumerate(rows, start=1):
        check_pair_row(row, f"row {n}")
    return write_jsonl(path, rows)


def read_preferences(path: str | Path) -> list[dict]:
    """Read an exported preference file (see module doc); errors name file, line and field."""
    rows = [check_pair_row(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]
    if not rows:
        raise UserError(f"{path}: no preference pairs (run `rlhf label export` after labeling)")
    return rows


def read_preferences_meta(path: str | Path) -> dict | None:
    """The `<stem>.meta.json` written next to an export (None if absent), e.g. meta["bayes_accuracy"]."""
    p = Path(path)
    meta = p.with_name(p.stem + ".meta.json")
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{meta}: not valid JSON ({e.msg} at line {e.lineno})") from None
