import json

import pytest

from rlhf.errors import UserError
from rlhf.io import MetricsLogger, read_jsonl, truncate_metrics, write_jsonl


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path) as m:
        for step in range(1, 6):
            m.log({"step": step, "loss": 1.0 / step})
    with path.open("a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    truncate_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    with MetricsLogger(path, append=True) as m:
        m.log({"step": 4})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_read_jsonl_names_file_line_and_field(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}, {"other": 1}])
    with pytest.raises(UserError, match=r"a.jsonl:2: missing field 'prompt'"):
        read_jsonl(tmp_path / "a.jsonl", required=("prompt",))
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(UserError, match=r"b.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "b.jsonl")
