"""Refresh (issue 17): a local site that changes between two crawls — what the manifest says, what was asked with
validators, where removed pages go, and how generate and the dataset step treat pairs of changed/removed pages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FixtureSite  # noqa: E402
from fake_llm_server import FakeLLMServer  # noqa: E402

from umtcds_core import cli  # noqa: E402
from umtcds_core.crawl import MANIFEST, CrawlConfig, crawl  # noqa: E402
from umtcds_core.dataset import build_dataset  # noqa: E402
from umtcds_core.llm import OpenAIBackend, RetryPolicy  # noqa: E402
from umtcds_core.qa import GenSettings, generate  # noqa: E402
from umtcds_core.workspace import site_changes  # noqa: E402

KEY = "sk-refresh-test-0a1b2c3d"
HTML = "text/html; charset=utf-8"


def page(title: str, *paras: str, links: tuple[str, ...] = ()) -> bytes:
    nav = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    body = "".join(f"<p>{p}</p>" for p in paras)
    return (
        f"<html><head><meta charset='utf-8'><title>{title}</title></head><body><nav>{nav}</nav>"
        f"<article><h1>{title}</h1>{body}</article><footer>版权所有 示范大学</footer></body></html>"
    ).encode()


def route(body: bytes, etag: str | None = None, last_modified: str | None = None) -> tuple:
    headers = {k: v for k, v in (("ETag", etag), ("Last-Modified", last_modified)) if v}
    return (200, body, HTML, headers)


HOME_TEXT = "示范大学新闻网每天发布学校的通知公告、学术活动和校园新闻，欢迎师生浏览。"
A = page(
    "图书馆开放时间",
    "图书馆每天早上七点半开馆，晚上十点闭馆，节假日另行通知。",
    "借书需要携带校园卡，每人最多借二十本。",
)
B1 = page(
    "奖学金评审通知",
    "本年度国家奖学金评审工作于十月开始，申请截止日期为十月十五日。",
    "联系人张老师，手机 13812345678，办公电话 010-62751234。",
)
B2 = page(
    "奖学金评审通知",
    "本年度国家奖学金评审工作推迟到十一月开始，申请截止日期改为十一月二十日。",
    "联系人张老师，办公电话 010-62751234。",
)
C = page("运动会报名", "第五十届运动会报名将于九月二十日结束，各学院体育委员负责汇总名单。", "比赛项目包括田径和游泳。")
D = page(
    "新生入学须知", "新生于九月一日到北门报到大厅办理入学手续，需携带录取通知书和身份证。", "宿舍钥匙在报到时领取。"
)
E = page("校医院门诊安排", "校医院门诊时间为周一至周五上午八点至下午五点，急诊全天开放。", "看病需要出示校园卡。")


def _site_v1(site: FixtureSite) -> None:
    site.routes.update(
        {
            "/": route(page("示范大学新闻网", HOME_TEXT, links=("/a.html", "/b.html", "/c.html", "/e.html")), '"h1"'),
            "/a.html": route(A, etag='"a1"'),
            "/b.html": route(B1, last_modified="Mon, 01 Jan 2024 08:00:00 GMT"),
            "/c.html": route(C, etag='"c1"'),
            "/e.html": route(E),  # no validators: compared by content hash
        }
    )


def _site_v2(site: FixtureSite) -> None:
    """A week later: b edited, c gone, d added and linked from the home page (whose text stays the same)."""
    site.routes.update(
        {
            "/": route(page("示范大学新闻网", HOME_TEXT, links=("/a.html", "/b.html", "/d.html", "/e.html")), '"h2"'),
            "/b.html": route(B2, last_modified="Mon, 08 Jan 2024 08:00:00 GMT"),
            "/c.html": (404, b"<html><body><h1>404 Not Found</h1></body></html>", HTML),
            "/d.html": route(D, etag='"d1"'),
        }
    )


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]


def _last_run(out: Path) -> dict[str, dict]:
    rows = _rows(out)
    run = rows[-1]["run"]
    return {r["url"].split(":", 2)[-1].split("/", 1)[-1]: r for r in rows if r["run"] == run}


def _refresh(capsys, site, out) -> str:
    rc = cli.main(["crawl", site.url("/"), "--out", str(out), "--refresh", "--delay", "0", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_refresh_marks_every_page_and_asks_with_validators(capsys, tmp_path):
    out = tmp_path / "pages"
    with FixtureSite() as site:
        _site_v1(site)
        first = crawl(CrawlConfig(site.url("/"), out, delay=0, depth=1))
        assert first.saved == 5 and "change" not in _rows(out)[0]
        names = {k: r["path"] for k, r in _last_run(out).items()}
        _site_v2(site)
        site.access_log.clear()
        line = _refresh(capsys, site, out)

        rows = _last_run(out)
        assert {k: r["change"] for k, r in rows.items() if k.endswith(".html") or k == ""} == {
            "": "unchanged",  # a new link, the same text: nothing downstream to redo (d is still found)
            "a.html": "unchanged",
            "b.html": "changed",
            "c.html": "removed",
            "d.html": "new",
            "e.html": "unchanged",
        }
        assert "1 new, 1 changed, 3 unchanged, 1 removed" in line and "1 answered 304" in line
        # conditional requests carried the previous run's validators; only a's ETag still matched
        asked = {path: (inm, ims) for path, inm, ims in site.conditional}
        assert asked["/a.html"] == ('"a1"', None) and asked["/c.html"] == ('"c1"', None) and asked["/"][0] == '"h1"'
        assert asked["/b.html"] == (None, "Mon, 01 Jan 2024 08:00:00 GMT")
        assert "/e.html" not in asked and "/d.html" not in asked  # no validators known: plain GETs
        assert site.not_modified == ["/a.html"]
        assert rows["a.html"]["status"] == 304 and rows["a.html"]["checked"] == "304"
        assert rows["e.html"]["checked"] == "hash" and rows["a.html"]["path"] == names["a.html"]
        # files: b rewritten in place, c moved to removed/ (never deleted), d new
        assert "十一月二十日" in (out / names["b.html"]).read_text(encoding="utf-8")
        assert not (out / names["c.html"]).exists()
        assert (out / "removed" / names["c.html"]).read_text(encoding="utf-8").startswith("运动会报名")
        assert rows["c.html"]["removed_to"] == f"removed/{names['c.html']}" and rows["c.html"]["path"] is None
        assert (out / rows["d.html"]["path"]).exists()
        assert site_changes(out) == {"new": 1, "changed": 1, "unchanged": 3, "removed": 1}

        # nothing changed since: every page with a validator is a 304, nothing new, nothing removed
        site.not_modified.clear()
        line = _refresh(capsys, site, out)
        assert "0 new, 0 changed, 5 unchanged, 0 removed" in line
        assert sorted(site.not_modified) == ["/", "/a.html", "/b.html", "/d.html"]
        assert site_changes(out)["unchanged"] == 5


def test_refresh_of_an_empty_folder_is_a_first_crawl_with_every_page_new(capsys, tmp_path):
    with FixtureSite() as site:
        _site_v1(site)
        line = _refresh(capsys, site, tmp_path / "pages")
    assert "5 new, 0 changed, 0 unchanged, 0 removed" in line


def _openai(srv) -> OpenAIBackend:
    return OpenAIBackend("fake-model", KEY, srv.openai_base, timeout=5, retry=RetryPolicy(base_delay=0.01))


def test_generate_redoes_only_changed_pages_marks_stale_pairs_and_the_dataset_leaves_them_out(capsys, tmp_path):
    out, qa_dir = tmp_path / "pages", tmp_path / "qa"
    settings = GenSettings(backend="openai", clean=False, pairs_per_page=2)
    with FixtureSite() as site, FakeLLMServer(api_key=KEY) as srv:
        _site_v1(site)
        crawl(CrawlConfig(site.url("/"), out, delay=0, depth=1))
        names = {k: r["path"] for k, r in _last_run(out).items()}
        first = generate(out, qa_dir, _openai(srv), settings)
        assert first.processed == 5 and first.pairs > 0
        # personal data: the mobile number never reached the LLM, the office landline did
        sent = "\n".join(m["content"] for r in srv.chat_requests() for m in r["body"]["messages"])
        assert "13812345678" not in sent and "[手机号]" in sent and "010-62751234" in sent
        b_pairs = [json.loads(x) for x in (qa_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
        assert all(p["pii"] == {"mobile": 1} for p in b_pairs if p["file"] == names["b.html"])
        assert first.pii_pages == 1 and first.pii["mobile"] == 1

        _site_v2(site)
        _refresh(capsys, site, out)
        n_requests = len(srv.chat_requests())
        second = generate(out, qa_dir, _openai(srv), settings)

    # only the new and the changed page went to the LLM (d, b)
    asked = len(srv.chat_requests()) - n_requests
    assert second.processed == 2 and asked == 2
    qa = [json.loads(x) for x in (qa_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    stale = [p for p in qa if p.get("stale")]
    assert {p["file"] for p in stale} == {names["b.html"], names["c.html"]}
    assert second.stale == len(stale)
    fresh_b = [p for p in qa if p["file"] == names["b.html"] and not p.get("stale")]
    assert fresh_b and all("十月十五日" not in p["answer"] for p in fresh_b)
    assert any(p["file"] == names["a.html"] and not p.get("stale") for p in qa)  # unchanged: kept, not stale
    assert not (qa_dir / "superseded.jsonl").exists()  # kept in qa.jsonl, marked, not moved

    report = build_dataset(qa_dir / "qa.jsonl", tmp_path / "ds")
    assert report["stale_count"] == len(stale) and report["pairs"] == len(qa) - len(stale)
    written = "".join((tmp_path / "ds" / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "dev", "test"))
    assert all(p["answer"] not in written for p in stale)  # answers: the fake LLM asks alike of b's two versions
    assert all(p["answer"] in written for p in qa if not p.get("stale"))
    assert {s["question"] for s in report["stale"]} == {p["question"] for p in stale}
    assert any("stale" in w for w in report["warnings"])
    kept_all = build_dataset(qa_dir / "qa.jsonl", tmp_path / "ds2", include_stale=True)
    assert kept_all["pairs"] == len(qa) and kept_all["stale_count"] == 0


def test_a_dataset_of_only_stale_pairs_is_one_sentence(capsys, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"question": f"问题{i}？", "answer": f"答案{i}。", "stale": True}, ensure_ascii=False) + "\n"
            for i in range(4)
        ),
        encoding="utf-8",
    )
    assert cli.main(["dataset", str(qa), "--out", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and "--include-stale" in err and "Traceback" not in err
    assert cli.main(["dataset", str(qa), "--out", str(tmp_path / "ds"), "--include-stale"]) == 0


def test_refresh_plan_reindexes_with_the_projects_own_index_settings(workspace):
    """An index built from the Crawl page (chunk size, embedding model…) is refreshed with the same settings."""
    import json

    from umtcds_core.index import index_dir_of
    from umtcds_core.jobs import SETTINGS_FILE
    from umtcds_core.refresh import plan

    ws = workspace
    ws.pages_dir.mkdir(parents=True, exist_ok=True)
    (ws.pages_dir / "p.txt").write_text("page", encoding="utf-8")
    (ws.pages_dir / "manifest.jsonl").write_text(json.dumps({"url": "http://x.test/", "depth": 0}) + "\n")
    index_dir_of(ws).mkdir(parents=True, exist_ok=True)
    (index_dir_of(ws) / "meta.json").write_text("{}", encoding="utf-8")
    steps = dict((step, args) for step, args, _ in plan(ws))
    assert steps["index"] == [str(ws.pages_dir), "--out", str(index_dir_of(ws)), "--quiet"]
    job = ws.jobs_dir / "index-1"
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"id": "index-1", "step": "index", "argv": [], "started": 1.0}))
    (job / SETTINGS_FILE).write_text("chunk_chars: 300\n", encoding="utf-8")
    steps = dict((step, args) for step, args, _ in plan(ws))
    assert steps["index"][:2] == ["--config", str(job / SETTINGS_FILE)]
