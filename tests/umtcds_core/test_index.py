"""umtcds_core.index: chunks, a Chinese-aware BM25 index over a real crawl, incremental re-indexing, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.index_helpers import page_path
from umtcds_core import index as ix
from umtcds_core.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _copy_pages(demo_index, tmp_path):
    pages = tmp_path / "pages"
    shutil.copytree(demo_index[0], pages)
    return pages


# ---- tokens and chunks ----------------------------------------------------------------------------------------------
def test_tokens_hold_words_bigrams_and_characters_and_folded_english():
    toks = ix.tokenize("学生证就是借书证 Libraries' Books")
    assert "借书证" in toks or "借书" in toks  # a jieba word
    assert "书证" in toks and "借书" in toks  # character bigrams
    assert "借" in toks and "书" in toks  # single characters: 借书 meets 借阅书籍
    assert "library" in toks and "book" in toks  # lower-cased, plural folded
    assert ix.tokenize("the of and 的") == []  # stop words only
    assert ix.tokenize("When does the bus run?") == ["bus", "run"]  # "does" is a stop word before "-s" folding


def test_chunks_follow_headings_stay_in_size_and_overlap():
    zh_para = "图书馆周一至周五早上7:30开门，晚上22:30闭馆。" * 12  # ~300 characters, no blank line inside
    body = "\n\n".join(["Opening hours", "The library opens at 7:30.", "借阅规则", zh_para, "Contact", "Call 5550."])
    chunks = ix.chunk_text(body, chunk_chars=300, overlap_chars=60)
    headings = [h for h, _ in chunks]
    assert headings[0] == "Opening hours" and "借阅规则" in headings and headings[-1] == "Contact"
    for _, text in chunks:
        assert ix.text_size(text) <= 300 + 60 + 10  # a chunk (plus its overlap) stays near the size
    zh_chunks = [t for h, t in chunks if h == "借阅规则"]
    assert len(zh_chunks) >= 2  # the long Chinese paragraph was cut at sentence ends
    first, second = zh_chunks[0], zh_chunks[1]
    assert second.split("\n")[0] in first  # the next chunk opens with the previous one's tail
    assert all(t.rstrip().endswith("。") for t in zh_chunks[:-1])


# ---- the index over a real crawl ------------------------------------------------------------------------------------
def test_build_writes_chunks_with_manifest_fields(demo_index):
    pages, index_dir = demo_index
    meta = json.loads((index_dir / "meta.json").read_text(encoding="utf-8"))
    chunks = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert meta["settings"] == {"chunk_chars": 600, "overlap_chars": 100}
    assert set(meta["pages"]) == {p.name for p in pages.glob("*.txt")}
    assert all(len(info["sha"]) == 40 for info in meta["pages"].values())
    zh_lib = [c for c in chunks if page_path(c["url"]) == "zh/library.html"]
    assert zh_lib and zh_lib[0]["title"] == "图书馆" and zh_lib[0]["chunk_id"].endswith("#0")
    assert (pages / zh_lib[0]["page"]).exists() and "借书证" in zh_lib[0]["text"]


def test_retrieve_json_shape_and_a_paraphrased_chinese_question(demo_index, capsys):
    _, index_dir = demo_index
    rc, out, _ = _run(capsys, "retrieve", str(index_dir), "一次最多能借阅多少本书籍？", "--k", "3", "--json")
    hits = json.loads(out)
    assert rc == 0 and 1 <= len(hits) <= 3
    for h in hits:
        assert {"url", "title", "text", "score", "page"} <= set(h)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert page_path(hits[0]["url"]) == "zh/library.html"  # 借阅/书籍 vs the page's 借/书


@pytest.mark.parametrize(
    ("question", "source"),
    [
        ("How many books may a student check out at once?", "library.html"),
        ("住在学生宿舍一年要交多少钱？", "zh/dormitories.html"),
        ("学校有几个食堂", "zh/canteen.html"),
        ("When does the library open on weekdays?", "library.html"),  # the title beats a page saying "weekdays"
    ],
)
def test_paraphrases_find_their_page_first(demo_index, question, source):
    hits = ix.Index.load(demo_index[1]).search(question, k=5)
    assert page_path(hits[0]["url"]) == source


def test_retrieve_plain_text_lists_rank_title_and_url(demo_index, capsys):
    rc, out, _ = _run(capsys, "retrieve", str(demo_index[1]), "国家奖学金是多少钱？", "--k", "2")
    assert rc == 0 and out.startswith("[1] ") and "/zh/scholarships.html" in out.splitlines()[0]


def test_a_question_sharing_no_word_returns_nothing(demo_index, capsys):
    rc, out, _ = _run(capsys, "retrieve", str(demo_index[1]), "xyzzy plugh", "--json")
    assert rc == 0 and json.loads(out) == []


# ---- re-indexing ------------------------------------------------------------------------------------------------------
def test_rerun_rechunks_only_new_and_changed_pages(demo_index, tmp_path, monkeypatch, capsys):
    pages = _copy_pages(demo_index, tmp_path)
    out_dir = tmp_path / "index"
    first = ix.build_index(pages, out_dir)
    n = first.pages
    assert (first.new, first.changed, first.unchanged, first.removed) == (n, 0, 0, 0)

    files = sorted(pages.glob("*.txt"))
    files[0].write_text(files[0].read_text(encoding="utf-8") + "\n新增：自习室开放到23:00。\n", encoding="utf-8")
    files[1].unlink()
    (pages / "extra.txt").write_text("Parking\n\nVisitor parking is at the West Gate.\n", encoding="utf-8")
    chunked = []
    real = ix.chunk_page
    monkeypatch.setattr(ix, "chunk_page", lambda page, s: chunked.append(page.page) or real(page, s))

    rc, out, _ = _run(capsys, "index", str(pages), "--out", str(out_dir), "--quiet")
    assert rc == 0
    assert f"{n} pages" in out and "1 new, 1 changed, " + f"{n - 2} unchanged, 1 removed" in out
    assert sorted(chunked) == sorted([files[0].name, "extra.txt"])  # unchanged pages: tokens from the cache
    hits = ix.Index.load(out_dir).search("visitor parking", k=1)
    assert hits[0]["page"] == "extra.txt" and hits[0]["url"] == ""  # no manifest record: no URL, the file named
    assert not ix.Index.load(out_dir).search("自习室") == []

    report = ix.build_index(pages, out_dir, {"chunk_chars": 300, "overlap_chars": 50})
    assert report.rebuilt_all and report.changed == n and report.new == 0  # settings changed: every page again


# ---- bad input: one sentence, exit 1, no traceback ------------------------------------------------------------------
def _one_error(capsys, *argv) -> str:
    rc, _, err = _run(capsys, *argv)
    assert rc == 1 and err.startswith("Error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_bad_pages_folders(tmp_path, capsys):
    err = _one_error(capsys, "index", str(tmp_path / "nope"), "--out", str(tmp_path / "ix"))
    assert "does not exist" in err and "umtcds crawl" in err
    (tmp_path / "empty").mkdir()
    err = _one_error(capsys, "index", str(tmp_path / "empty"), "--out", str(tmp_path / "ix"))
    assert "no .txt pages" in err
    err = _one_error(capsys, "index", str(tmp_path / "empty"), "--out", str(tmp_path / "ix"), "--chunk-chars", "10")
    assert "chunk_chars" in err


def test_missing_index_stale_index_and_empty_question(demo_index, tmp_path, capsys):
    err = _one_error(capsys, "retrieve", str(tmp_path / "none"), "图书馆")
    assert "build it with `umtcds index" in err

    pages = _copy_pages(demo_index, tmp_path)
    ix.build_index(pages, tmp_path / "index")
    page = sorted(pages.glob("*.txt"))[3]
    page.write_text(page.read_text(encoding="utf-8") + "\nchanged\n", encoding="utf-8")
    err = _one_error(capsys, "retrieve", str(tmp_path / "index"), "图书馆")
    assert "changed since the index was built" in err and "rebuild it with `umtcds index" in err
    assert page.name in err

    err = _one_error(capsys, "retrieve", str(demo_index[1]), "   ")
    assert "question is empty" in err
    err = _one_error(capsys, "retrieve", str(demo_index[1]), "图书馆", "--k", "0")
    assert "--k must be between 1 and 100" in err


def test_errors_have_a_chinese_sentence(tmp_path):
    with pytest.raises(ix.IndexError_) as exc:
        ix.Index.load(tmp_path)
    assert "umtcds index" in exc.value.zh and "索引" in exc.value.zh
