"""Step 3: reading, validation, leak-free exact split, formats, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from umtcds_core import dataset as ds
from umtcds_core.cli import main as cli_main

TOPICS = [
    "图书馆",
    "食堂",
    "体育馆",
    "校医院",
    "教务处",
    "宿舍",
    "实验室",
    "招生办",
    "财务处",
    "研究生院",
    "校车",
    "快递站",
]
ASKS = ["几点开门", "在哪里", "怎么预约", "电话是多少", "周末开放吗", "需要带学生证吗", "可以带朋友吗", "怎么缴费"]


def unique_pairs(n: int) -> list[dict]:
    """n pairs with clearly different questions (topic × ask), answers unique too."""
    out = []
    for i in range(n):
        t, a = TOPICS[i % len(TOPICS)], ASKS[(i // len(TOPICS)) % len(ASKS)]
        out.append({"question": f"{t}{a}？", "answer": f"答案{i}：{t}{a}的说明。", "source": f"https://u.edu/{i}"})
    return out


# Planted paraphrase duplicates: each family must stay inside one split.
FAMILIES = [
    ["学校图书馆周末几点开门？", "图书馆周末几点开门", "请问学校图书馆周末几点开门"],
    ["What time does the campus library open?", "When does the campus library open?"],
    ["研究生宿舍怎么申请？", "研究生宿舍如何申请", "研究生宿舍怎样申请？"],
    ["新生报到需要带哪些材料？", "新生报到要带哪些材料"],
]


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_splits(out: Path) -> dict[str, list[dict]]:
    return {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in ds.SPLITS
    }


def test_split_counts_rounding_rule():
    assert ds.split_counts(101, (8, 1, 1)) == (81, 10, 10)
    assert ds.split_counts(100, (8, 1, 1)) == (80, 10, 10)
    assert ds.split_counts(10, (8, 1, 1)) == (8, 1, 1)
    assert ds.split_counts(7, (8, 1, 1)) == (5, 1, 1)
    assert ds.split_counts(2, (8, 1, 1)) == (1, 1, 0)
    assert ds.split_counts(1, (8, 1, 1)) == (1, 0, 0)
    assert ds.split_counts(50, (1, 0, 0)) == (50, 0, 0)
    assert ds.parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    with pytest.raises(ds.DatasetError, match="8:1:1"):
        ds.parse_split("8:1")


def test_exact_counts_and_no_leak_with_planted_paraphrases(tmp_path):
    records = unique_pairs(101 - sum(len(f) for f in FAMILIES))
    for fam_i, fam in enumerate(FAMILIES):
        for j, q in enumerate(fam):
            records.insert(7 * fam_i + j, {"question": q, "answer": f"家族{fam_i}答案{j}", "source": "s"})
    assert len(records) == 101
    inp = write_jsonl(tmp_path / "qa.jsonl", records)
    report = ds.build_dataset(inp, tmp_path / "out", "8:1:1", seed=42)
    assert report["counts"] == {"train": 81, "dev": 10, "test": 10}
    assert report["exact_counts"] is True
    # each planted family is one reported group (entity swaps such as 教务处/财务处 may group too: harmless)
    groups = [set(g["questions"]) for g in report["groups"]["list"]]
    for fam in FAMILIES:
        assert any(set(fam) <= g for g in groups), fam
    splits = read_splits(tmp_path / "out")
    where = {}
    for s, recs in splits.items():
        for r in recs:
            where[r["messages"][0]["content"]] = s
    assert len(where) == 101
    for fam in FAMILIES:
        assert len({where[q] for q in fam}) == 1, fam
    # same seed → same split, other seed → another split
    again = ds.build_dataset(inp, tmp_path / "out2", "8:1:1", seed=42)
    assert read_splits(tmp_path / "out2") == splits and again["counts"] == report["counts"]
    ds.build_dataset(inp, tmp_path / "out3", "8:1:1", seed=7)
    assert read_splits(tmp_path / "out3")["test"] != splits["test"]
    saved = json.loads((tmp_path / "out" / "split_report.json").read_text(encoding="utf-8"))
    assert saved["counts"] == report["counts"] and "largest remainder" in saved["rounding"]


def test_broken_lines_reported_with_numbers_and_valid_kept(tmp_path):
    lines = [
        json.dumps({"question": "食堂在哪里？", "answer": "在二号楼。"}, ensure_ascii=False),
        "{not json",
        "",
        json.dumps({"question": "宿舍几点关门？"}, ensure_ascii=False),
        json.dumps({"question": "  ", "answer": "x"}),
        json.dumps({"foo": 1}),
        json.dumps({"instruction": "校车几点发车？", "input": "", "output": "七点。"}, ensure_ascii=False),
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}),
        json.dumps({"prompt": "体育馆开放吗？", "response": "开放。"}, ensure_ascii=False),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = ds.load_pairs(path)
    assert [p.question for p in res.pairs] == ["食堂在哪里？", "校车几点发车？", "体育馆开放吗？"]
    by_line = {p.line: p for p in res.problems}
    assert set(by_line) == {2, 4, 5, 6, 8, 10}
    assert "invalid JSON" in by_line[2].reason
    assert "missing field 'answer'" in by_line[4].reason
    assert "empty question" in by_line[5].reason
    assert "no question/answer fields" in by_line[6].reason
    assert "without a question" in by_line[8].reason
    assert all(p.skipped and p.path == str(path) for p in res.problems)
    assert str(by_line[4]).startswith(f"{path}:4: ") and str(by_line[4]).endswith("(skipped)")


def test_csv_and_json_inputs_and_folder(tmp_path):
    folder = tmp_path / "in"
    with open(folder.mkdir() or folder / "pairs.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "score"])
        w.writerow(["图书馆在哪？", "在东区。", "4"])
        w.writerow(["", "空问题", ""])
        w.writerow(["教务处电话？", "1234。", "5"])
    (folder / "alpaca.json").write_text(
        json.dumps(
            [{"instruction": "校医院几点开？", "output": "八点。"}, {"instruction": "x"}], ensure_ascii=False, indent=2
        ),
        encoding="utf-8",
    )
    write_jsonl(folder / "failures.jsonl", [{"page": "a.txt", "reason": "timeout"}])  # step 2's, not pairs
    res = ds.load_pairs(folder)
    assert sorted(p.question for p in res.pairs) == ["图书馆在哪？", "教务处电话？", "校医院几点开？"]
    assert {(Path(p.path).name, p.line) for p in res.problems} == {("pairs.csv", 3), ("alpaca.json", 6)}
    assert [p.score for p in res.pairs if p.question == "教务处电话？"] == [5.0]
    assert not any("failures" in f for f in res.files)


def test_gbk_csv_from_excel_reads(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("问题,答案\n校医院电话？,1234\n".encode("gbk"))
    res = ds.load_pairs(path)
    assert [(p.question, p.answer) for p in res.pairs] == [("校医院电话？", "1234")]


def test_edited_copy_wins_over_qa_in_same_folder(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", unique_pairs(3))
    write_jsonl(tmp_path / "imported" / "mine.jsonl", unique_pairs(1))
    write_jsonl(tmp_path / "qa_edited.jsonl", unique_pairs(2))
    assert [Path(f).name for f in ds.input_files(tmp_path)] == ["qa_edited.jsonl"]
    write_jsonl(tmp_path / "b" / "qa.jsonl", unique_pairs(1))  # below the edited copy's folder: covered by it
    assert [Path(f).name for f in ds.input_files(tmp_path)] == ["qa_edited.jsonl"]
    write_jsonl(tmp_path / "a" / "qa_edited.jsonl", unique_pairs(1))
    assert [str(Path(f).relative_to(tmp_path)) for f in ds.input_files(tmp_path / "a")] == ["a/qa_edited.jsonl"]
    assert [str(Path(f).relative_to(tmp_path)) for f in ds.input_files(tmp_path / "b")] == ["b/qa.jsonl"]
    (tmp_path / "b" / "workspace.json").write_text("{}", encoding="utf-8")
    write_jsonl(tmp_path / "b" / "qa" / "qa.jsonl", unique_pairs(1))
    write_jsonl(tmp_path / "b" / "pages" / "manifest.jsonl", [{"url": "x"}])
    assert [str(Path(f).relative_to(tmp_path)) for f in ds.input_files(tmp_path / "b")] == ["b/qa/qa.jsonl"]
    write_jsonl(tmp_path / "b" / "dataset" / "qa_edited.jsonl", unique_pairs(1))
    assert [str(Path(f).relative_to(tmp_path)) for f in ds.input_files(tmp_path / "b")] == ["b/dataset/qa_edited.jsonl"]


@pytest.mark.parametrize("fmt", ds.FORMATS)
def test_every_format_round_trips(tmp_path, fmt):
    pairs = [ds.Pair(**{k: v for k, v in r.items()}) for r in unique_pairs(12)]
    pairs.append(ds.Pair("那周末呢？", "周末九点。", history=[["图书馆几点开门？", "八点。"]]))
    pairs.append(ds.Pair("Who are you?", "A campus assistant.", system="Own system prompt."))
    report = ds.build_dataset(tmp_path / "x", tmp_path / fmt, fmt=fmt, system_prompt="你是校园助手。", pairs=pairs)
    assert sum(report["counts"].values()) == 14
    back = ds.load_pairs(tmp_path / fmt)  # the folder of our own split files reads back
    assert back.problems == []
    got = {(p.question, p.answer, p.system, tuple(map(tuple, p.history))) for p in back.pairs}
    want = {(p.question, p.answer, p.system or "你是校园助手。", tuple(map(tuple, p.history))) for p in pairs}
    assert got == want
    info = tmp_path / fmt / "dataset_info.json"
    if fmt == "glm4":
        assert not info.exists()
        first = read_splits(tmp_path / fmt)["train"][0]
        assert first["messages"][0]["role"] == "system" and first["messages"][-1]["role"] == "assistant"
    else:
        meta = json.loads(info.read_text(encoding="utf-8"))
        assert meta["umtcds_train"]["file_name"] == "train.jsonl" and meta["umtcds_dev"]["formatting"] == fmt


def test_tiny_dataset_warns_and_fills_dev_test(tmp_path):
    inp = write_jsonl(tmp_path / "qa.jsonl", unique_pairs(4))
    report = ds.build_dataset(inp, tmp_path / "out")
    assert report["counts"] == {"train": 2, "dev": 1, "test": 1}
    assert any("Only 4 pairs" in w for w in report["warnings"])


def test_exact_duplicates_dropped_and_reported(tmp_path):
    recs = unique_pairs(5)
    recs.append(dict(recs[0], question=recs[0]["question"] + " "))
    inp = write_jsonl(tmp_path / "qa.jsonl", recs)
    report = ds.build_dataset(inp, tmp_path / "out")
    assert report["pairs"] == 5 and report["pairs_read"] == 6
    dup = [p for p in report["problems"] if "exact duplicate" in p["reason"]]
    assert dup and dup[0]["line"] == 6


def test_no_valid_pairs_is_one_clear_error(tmp_path):
    inp = tmp_path / "bad.jsonl"
    inp.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ds.DatasetError, match=r"No valid question-answer pairs.*bad.jsonl:1"):
        ds.build_dataset(inp, tmp_path / "out")


def test_cli(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "qa.jsonl", unique_pairs(20) + [{"question": "q"}])
    rc = cli_main(["dataset", str(inp), "--out", str(tmp_path / "d"), "--split", "8:1:1", "--format", "sharegpt"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train 16 / dev 2 / test 2" in out and "qa.jsonl:21: missing field 'answer' (skipped)" in out
    assert (tmp_path / "d" / "dataset_info.json").exists()
    rc = cli_main(["dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "d")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_grouping_rules():
    qs = ["3号楼在哪里？", "4号楼在哪里？", "3号楼在哪里", "研究生宿舍怎么申请？", "如何申请研究生宿舍", "食堂在哪里？"]
    assert ds.find_groups(qs) == [[0, 2], [1], [3, 4], [5]]
    assert ds.normalize("  Library, OPEN?! ") == "library open"


def test_apply_table_edits_maps_visible_rows():
    records = [{"question": f"q{i}", "answer": f"a{i}", "source": "s"} for i in range(5)]
    visible = ds.search_rows(records, "q3") + ds.search_rows(records, "q1")  # table shows rows 3 and 1
    assert visible == [3, 1]
    delta = {
        "edited_rows": {"0": {"answer": "new3"}, 1: {"question": "  "}},
        "deleted_rows": [1],
        "added_rows": [{"question": "nq", "answer": "na"}, {"answer": "only answer"}, {}],
    }
    out, notes = ds.apply_table_edits(records, visible, delta)
    assert [r["question"] for r in out] == ["q0", "q2", "q3", "q4", "nq"]
    assert out[2]["answer"] == "new3" and out[-1]["source"] == "manual"
    assert any("empty question" in n for n in notes) and any("1 new row(s)" in n for n in notes)
    assert records[3]["answer"] == "a3"  # input untouched


def test_cli_config_file_round_trip_and_flags_win(tmp_path, capsys):
    """The settings YAML written from the schema is read back by the real CLI; a flag given too wins over the file."""
    inp = write_jsonl(tmp_path / "qa.jsonl", unique_pairs(20))
    settings = tmp_path / "dataset.yaml"
    values = {"input": str(inp), "out": str(tmp_path / "d"), "split": "6:2:2", "seed": 3, "format": "alpaca"}
    ds.DATASET.save_yaml({**values, "system_prompt": "你是助手。", "dedup_threshold": 0.6}, settings)
    text = settings.read_text(encoding="utf-8")
    assert 'split: "6:2:2"  # train:dev:test ratios' in text and 'format: "alpaca"  # glm4:' in text
    assert ds.DATASET.load_yaml(settings)["dedup_threshold"] == 0.6  # what was saved reads back
    assert cli_main(["dataset", "--config", str(settings), "--seed", "7"]) == 0
    assert "train 12 / dev 4 / test 4 (split 6:2:2, seed 7, format alpaca)" in capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "split_report.json").read_text(encoding="utf-8"))
    assert report["seed"] == 7 and report["dedup_threshold"] == 0.6 and report["system_prompt"] == "你是助手。"
    first = json.loads((tmp_path / "d" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["system"] == "你是助手。" and "instruction" in first
    # IN given on the command line wins over the file's input too
    other = write_jsonl(tmp_path / "other.jsonl", unique_pairs(10))
    assert cli_main(["dataset", str(other), "--config", str(settings)]) == 0
    assert json.loads((tmp_path / "d" / "split_report.json").read_text(encoding="utf-8"))["pairs"] == 10


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--split", "8:1"], "split: '8:1' is not three non-negative numbers with train > 0; write it like 8:1:1"),
        (["--dedup-threshold", "1.5"], "dedup_threshold: 1.5 must be in (0, 1]; 0.5 is a good start"),
        (["--seed", "-1"], "seed: must be 0 or more"),
    ],
)
def test_cli_bad_value_is_one_sentence_and_exit_1(tmp_path, capsys, argv, expected):
    inp = write_jsonl(tmp_path / "qa.jsonl", unique_pairs(5))
    assert cli_main(["dataset", str(inp), "--out", str(tmp_path / "d"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: The settings has a problem — ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing written


def test_cli_bad_settings_file_names_the_file_and_the_key(tmp_path, capsys):
    settings = tmp_path / "s.yaml"
    settings.write_text("input: qa.jsonl\nout: d\nformt: alpaca\n", encoding="utf-8")
    assert cli_main(["dataset", "--config", str(settings)]) == 1
    err = capsys.readouterr().err
    assert f"Error: {settings} has a problem — formt: unknown key; did you mean 'format'?" in err
    assert "Traceback" not in err
    assert cli_main(["dataset", "--out", str(tmp_path / "d")]) == 1  # IN from neither the argument nor a file
    assert "No input: give IN" in capsys.readouterr().err


def test_size_warnings_name_few_pairs_and_a_tiny_test_split_in_both_languages():
    """Issue 21 §8: 15 pairs and a one-question test split are named, in English and in Chinese."""
    from umtcds_core.dataset import size_warnings

    notes = size_warnings(15, {"train": 12, "dev": 2, "test": 1})
    en = " ".join(e for e, _ in notes)
    zh = " ".join(z for _, z in notes)
    assert "Only 15 pairs" in en and "test split has only 1 question" in en
    assert "只有 15 对问答" in zh and "测试集只有 1 个问题" in zh
    assert size_warnings(400, {"train": 320, "dev": 40, "test": 40}) == []


# ---- training with context (issue 15 §3) ---------------------------------------------------------------------------
def _seed_pairs_for(index_dir: Path) -> list[dict]:
    """The demo's hand-written pairs with full source URLs of the crawl the index was built from, plus two
    unanswerable questions."""
    from umtcds_core.demo_site import QA_SEED_FILE

    root = json.loads((index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()[0])["url"]
    seeds = [json.loads(x) for x in QA_SEED_FILE.read_text(encoding="utf-8").splitlines() if x.strip()]
    pairs = [{**r, "source": root.rstrip("/") + "/" + r["source"]} for r in seeds]
    pairs += [
        {"question": "Who is the president of the university?", "answer": "The website does not say.",
         "source": root, "kind": "unanswerable"},
        {"question": "校长叫什么名字？", "answer": "网站上没有提到这一点。", "source": root, "kind": "unanswerable"},
    ]  # fmt: skip
    return pairs


def test_context_retrieved_holds_the_source_at_the_share_cites_and_refuses(tmp_path, demo_index):
    from umtcds_core.grounding import REFUSAL_EN, REFUSAL_ZH, cited, is_refusal

    _, index_dir = demo_index
    inp = write_jsonl(tmp_path / "qa.jsonl", _seed_pairs_for(index_dir))
    report = ds.build_dataset(inp, tmp_path / "out", "6:2:2", seed=3, context="retrieved", index=index_dir,
                              context_k=3, oracle_share=0.75)  # fmt: skip
    ctx = report["context"]
    assert ctx["mode"] == "retrieved" and ctx["k"] == 3
    splits = read_splits(tmp_path / "out")
    for split, recs in splits.items():
        counts = ctx["counts"][split]
        answerable = counts["oracle"] + counts["distractors"]
        assert counts["no-source"] == 0 and len(recs) == answerable + counts["unanswerable"]
        assert counts["oracle"] == round(0.75 * answerable)  # exactly the share, in every split
    holding = refused = total = 0
    for rec in splits["test"]:  # test records carry their pair's meta: check the source really is in the prompt
        meta, msgs = rec["meta"], rec["messages"]
        user, target = msgs[-2]["content"], msgs[-1]["content"]
        assert msgs[0]["role"] == "system" and user.startswith(("Sources:", "资料："))
        if meta["kind"] == "unanswerable":
            assert target in (REFUSAL_EN, REFUSAL_ZH)
            continue
        total += 1
        if meta["source"] + "\n" in user.replace(")\n", "\n"):  # "[n] title (url)" heads each source
            holding += 1
            n = cited(target)
            assert meta["context"] == "oracle" and n and f"[{n[-1]}] " in user and target.endswith(f"[{n[-1]}]")
            assert f"({meta['source']})" in user.split(f"[{n[-1]}] ", 1)[1].split("\n", 1)[0]
        else:
            refused += 1
            assert meta["context"] == "distractors" and is_refusal(target) and not cited(target)
    assert holding == ctx["counts"]["test"]["oracle"] and refused == ctx["counts"]["test"]["distractors"]
    assert holding + refused == total
    # seeded: the same settings give the same records; another seed picks other records
    ds.build_dataset(inp, tmp_path / "again", "6:2:2", seed=3, context="retrieved", index=index_dir, context_k=3,
                     oracle_share=0.75)  # fmt: skip
    assert read_splits(tmp_path / "again") == splits
    assert any("max_input_length" in w for w in report["warnings"])


def test_context_copies_show_each_training_question_with_and_without_its_source(tmp_path, demo_index, capsys):
    """--context-copies 4 at share 0.75: every indexed training question gets 3 records with its source (answered,
    cited) and 1 without (refused); dev and test are the records one copy gives; a bad count is one sentence."""
    from umtcds_core.grounding import cited, is_refusal

    _, index_dir = demo_index
    inp = write_jsonl(tmp_path / "qa.jsonl", _seed_pairs_for(index_dir))
    one = ds.build_dataset(inp, tmp_path / "one", "6:2:2", seed=3, context="retrieved", index=index_dir, context_k=3,
                           oracle_share=0.75)  # fmt: skip
    four = ds.build_dataset(inp, tmp_path / "four", "6:2:2", seed=3, context="retrieved", index=index_dir,
                            context_k=3, oracle_share=0.75, context_copies=4)  # fmt: skip
    assert four["context"]["copies"] == 4
    single, many = read_splits(tmp_path / "one"), read_splits(tmp_path / "four")
    assert many["dev"] == single["dev"] and many["test"] == single["test"]
    c1, c4 = one["context"]["counts"]["train"], four["context"]["counts"]["train"]
    answerable = c1["oracle"] + c1["distractors"]
    assert (c4["oracle"], c4["distractors"]) == (3 * answerable, answerable)
    assert c4["unanswerable"] == c1["unanswerable"] and len(many["train"]) == 4 * answerable + c1["unanswerable"]
    views: dict[str, list[bool]] = {}
    for rec in many["train"]:
        user, target = rec["messages"][-2]["content"], rec["messages"][-1]["content"]
        question = user.rsplit("\n", 1)[-1]
        if question.endswith(("Who is the president of the university?", "校长叫什么名字？")):
            continue  # the two unanswerable pairs: one refused record each
        assert is_refusal(target) or cited(target)
        views.setdefault(question, []).append(not is_refusal(target))
    odd = {q: v for q, v in views.items() if sorted(v) != [False, True, True, True]}
    assert len(views) == answerable and not odd, odd
    again = ds.build_dataset(inp, tmp_path / "again", "6:2:2", seed=3, context="retrieved", index=index_dir,
                             context_k=3, oracle_share=0.75, context_copies=4)  # fmt: skip
    assert read_splits(tmp_path / "again") == many and again["context"] == four["context"]
    assert cli_main(["dataset", str(inp), "--out", str(tmp_path / "bad"), "--context", "retrieved", "--index",
                     str(index_dir), "--context-copies", "0"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "must be between 1 and 10" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


def test_context_settings_and_bad_index_are_one_sentence(tmp_path, demo_index, capsys):
    inp = write_jsonl(tmp_path / "qa.jsonl", unique_pairs(6))
    assert cli_main(["dataset", str(inp), "--out", str(tmp_path / "o"), "--context", "retrieved"]) == 1
    err = capsys.readouterr().err
    assert "context retrieved needs the index" in err and "Traceback" not in err
    rc = cli_main(["dataset", str(inp), "--out", str(tmp_path / "o"), "--context", "retrieved",
                   "--index", str(tmp_path / "nope")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "There is no index in" in err and "umtcds index" in err and "Traceback" not in err
    assert cli_main(["dataset", str(inp), "--out", str(tmp_path / "o"), "--oracle-share", "1.5"]) == 1
    assert "oracle_share: 1.5 must be between 0 and 1" in capsys.readouterr().err
    # a stale index (a page edited since it was built) is refused the same way
    import shutil

    pages, index_dir = demo_index
    copy = tmp_path / "copy"
    shutil.copytree(pages, copy / "pages")
    from umtcds_core.index import build_index

    build_index(copy / "pages", copy / "index")
    page = sorted((copy / "pages").glob("*.txt"))[0]
    page.write_text(page.read_text(encoding="utf-8") + "\nNew line.\n", encoding="utf-8")
    rc = cli_main(["dataset", str(inp), "--out", str(tmp_path / "o"), "--context", "retrieved",
                   "--index", str(copy / "index")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "changed since the index was built" in err and "Traceback" not in err
    # context none: the test split still carries each pair's meta (evaluation reads it), training splits do not
    report = ds.build_dataset(inp, tmp_path / "plain", "4:1:1")
    assert report["context"] == {"mode": "none"}
    splits = read_splits(tmp_path / "plain")
    assert all("meta" in r for r in splits["test"]) and not any("meta" in r for r in splits["train"])
    assert splits["test"][0]["meta"]["source"].startswith("https://u.edu/")


# ---- unanswerable questions and paraphrases (issue 15 §4) -------------------------------------------------------------
def _generated_pages(n_pages: int = 12) -> list[dict]:
    """Step-2 output for ``n_pages`` pages: three answerable pairs each (with paraphrases) and one unanswerable
    question that borders the second one."""
    from umtcds_core.grounding import REFUSAL_ZH

    out = []
    for i, topic in enumerate(TOPICS[:n_pages]):
        file = f"p{i}.txt"
        for k, ask in enumerate(ASKS[:3]):
            out.append(
                {
                    "question": f"{topic}{ask}？",
                    "answer": f"答案{i}-{k}：{topic}{ask}的说明。",
                    "source": f"https://u.edu/{i}",
                    "file": file,
                    "kind": "answerable",
                    "paraphrase": f"想问一下，{topic}{ask}",
                }
            )
        out.append(
            {
                "question": f"{topic}{ASKS[1]}附近有没有充电桩？",
                "answer": REFUSAL_ZH,
                "source": f"https://u.edu/{i}",
                "file": file,
                "kind": "unanswerable",
            }
        )
    return out


def test_siblings_share_a_split_paraphrases_are_not_trained_and_refusals_are_counted(tmp_path, capsys):
    records = _generated_pages()
    inp = write_jsonl(tmp_path / "qa.jsonl", records)
    # a hand-written question worded like the canteen pair's paraphrase (and nothing like its question): it must
    # land with that pair, or the paraphrase would be tested on a trained question
    canteen = next(r for r in records if r["question"] == "食堂在哪里？")
    canteen["paraphrase"] = "学生吃饭的餐厅位置能告诉我吗"
    records.append({"question": "学生吃饭的餐厅位置能告诉我吗？", "answer": "另一个答案。", "source": "manual"})
    write_jsonl(inp, records)
    assert [0, 1] not in ds.find_groups(["食堂在哪里？", "学生吃饭的餐厅位置能告诉我吗？"])
    out = tmp_path / "data"
    assert cli_main(["dataset", str(inp), "--out", str(out), "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "split_report.json").read_text(encoding="utf-8"))
    splits = read_splits(out)
    where = {}
    for split, recs in splits.items():
        for r in recs:
            user = [m["content"] for m in r["messages"] if m["role"] == "user"][0]
            where[user] = split
    assert len(where) == len(records)
    # each unanswerable question sits with the answerable question of its page it borders (same ask: 在哪里)
    for topic in TOPICS[:12]:
        assert where[f"{topic}{ASKS[1]}附近有没有充电桩？"] == where[f"{topic}{ASKS[1]}？"], topic
    assert where["学生吃饭的餐厅位置能告诉我吗？"] == where["食堂在哪里？"]
    # paraphrases are never training examples (nor dev/test records' questions)
    trained = json.dumps(splits["train"], ensure_ascii=False)
    assert "想问一下，图书馆" not in trained and all(not u.startswith("想问一下，图书馆") for u in where)
    # unanswerable pairs train the refusal; the report counts them (and paraphrases) per split
    refusals = {
        s: sum(r["messages"][-1]["content"] == "网站上没有提到这一点。" for r in recs) for s, recs in splits.items()
    }
    assert report["unanswerable"] == refusals and sum(refusals.values()) == 12 and refusals["train"] > 0
    assert sum(report["paraphrases"].values()) == 36
    assert "Unanswerable questions (answer: the refusal) per split: train " in printed
    # the test records carry the paraphrase for evaluation
    test_meta = [r["meta"] for r in splits["test"]]
    assert all(m["paraphrase"] for m in test_meta if m["kind"] == "answerable")


def test_sibling_groups_without_kinds_are_the_near_duplicate_groups():
    pairs = [ds.parse_record(r, f"x:{i}")[0] for i, r in enumerate(unique_pairs(30))]
    assert ds.sibling_groups(pairs) == ds.find_groups([p.question for p in pairs])


def test_paraphrase_is_editable_in_the_table_and_an_empty_one_is_removed():
    records = [{"question": "Q1?", "answer": "A1.", "paraphrase": "P1?"}, {"question": "Q2?", "answer": "A2."}]
    delta = {"edited_rows": {0: {"paraphrase": ""}, 1: {"paraphrase": "P2?", "kind": "unanswerable"}}}
    out, notes = ds.apply_table_edits(records, [0, 1], delta)
    assert out == [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2.", "paraphrase": "P2?"}]
    assert notes == []
