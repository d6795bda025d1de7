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


def test_open_text_names_the_bad_line_and_a_folder(tmp_path):
    from rlhf.io import open_text

    (tmp_path / "a.jsonl").write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xff"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:3: not UTF-8 text \(byte b'\\xff' at column 8\)"):
        read_jsonl(tmp_path / "a.jsonl")
    with pytest.raises(UserError, match="a folder, not a file"):
        open_text(tmp_path)
    with open_text(tmp_path / "a.jsonl") as f:
        assert next(iter(f)) == '{"a": 1}\n'


def test_check_output_creates_nothing_and_names_the_path(tmp_path):
    from rlhf.io import check_output

    assert check_output(tmp_path / "new" / "deeper", "dir") == tmp_path / "new" / "deeper"
    assert check_output(tmp_path / "new" / "x.jsonl", "file") == tmp_path / "new" / "x.jsonl"
    assert list(tmp_path.iterdir()) == []  # checked, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"--out: .*/f is a file, not a folder"):
        check_output(tmp_path / "f", "dir", "--out")
    with pytest.raises(UserError, match=r"is a folder, not a file"):
        check_output(tmp_path, "file")
    with pytest.raises(UserError, match=r"cannot create the file .*/f/x.jsonl: .*/f is a file"):
        check_output(tmp_path / "f" / "x.jsonl", "file")
