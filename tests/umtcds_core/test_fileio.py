import json
import os

import pytest

from umtcds_core.fileio import (
    BadLine,
    append_jsonl,
    read_json,
    read_jsonl,
    tail_text,
    write_json_atomic,
    write_jsonl_atomic,
)


def test_atomic_json_roundtrip_and_no_temp_left(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "b.json", {"名字": "青山", "n": 1})
    assert read_json(path) == {"名字": "青山", "n": 1}
    assert "青山" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert os.listdir(path.parent) == ["b.json"]


def test_read_json_default_on_missing_or_broken(tmp_path):
    assert read_json(tmp_path / "missing.json", default={}) == {}
    (tmp_path / "bad.json").write_text("{half", encoding="utf-8")
    assert read_json(tmp_path / "bad.json") is None


def test_jsonl_bad_lines_are_reported_with_numbers_and_valid_lines_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl_atomic(path, [{"a": 1}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("not json\n\n[1,2]\n")
    append_jsonl(path, {"a": 2})
    errors: list[BadLine] = []
    assert read_jsonl(path, errors) == [{"a": 1}, {"a": 2}]
    assert [e.lineno for e in errors] == [2, 4]
    assert str(errors[0]).startswith(f"{path}:2:")
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)


def test_tail_text(tmp_path):
    p = tmp_path / "log.txt"
    p.write_text("x" * 100 + "END", encoding="utf-8")
    assert tail_text(p, 5) == "xxEND"
    assert tail_text(tmp_path / "none.txt") == ""
    assert json.loads(json.dumps({"ok": True}))
