"""Page 3 (Dataset): table edits saved to the workspace, search, add, statistics, split + export."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from umtcds_core.workspace import Workspace

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "3_dataset.py")


def _workspace(root: Path, n: int = 12) -> Workspace:
    ws = Workspace.create("ds-page", root=root)
    ws.qa_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "question": f"第{i}号楼在哪里？",
                "answer": f"第{i}号楼在校园{i}区。",
                "source": f"https://u.edu/p{i % 3}",
                "score": 4,
            },
            ensure_ascii=False,
        )
        for i in range(n)
    ]
    lines.insert(3, "{broken")
    ws.qa_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ws


def _page(ws: Workspace) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def _edited(ws: Workspace) -> list[dict]:
    path = ws.dataset_dir / "qa_edited.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_renders_table_stats_and_problems(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    assert not at.exception
    editor = at.data_editor[0]
    assert editor.editing_mode == "dynamic"
    assert list(editor.value.columns) == ["question", "answer", "source", "score"]
    assert len(editor.value) == 12
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "12" and metrics["Source pages"] == "3"
    assert any("1 record(s) with problems" in e.label for e in at.expander)
    assert "Showing 12 of 12" in " ".join(c.value for c in at.caption)


def test_edit_delete_add_are_saved_and_survive_a_new_session(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    key = at.data_editor[0].key
    at.session_state[key] = {
        "edited_rows": {0: {"answer": "改过的答案。"}},
        "added_rows": [{"question": "新问题？", "answer": "新答案。"}, {"question": "只有问题"}],
        "deleted_rows": [1],
    }
    at.run()
    assert not at.exception
    saved = _edited(ws)
    assert len(saved) == 12  # 12 - 1 deleted + 1 complete new row
    assert saved[0]["answer"] == "改过的答案。" and saved[0]["score"] == 4
    assert "第1号楼在哪里？" not in [r["question"] for r in saved]
    assert saved[-1] == {"question": "新问题？", "answer": "新答案。", "source": "manual"}
    assert any("need both a question and an answer" in c.value for c in at.caption)
    assert ws.qa_file.read_text(encoding="utf-8").count("\n") == 13  # step 2's file untouched
    again = _page(ws)  # a brand-new session (reload) shows the edited copy
    assert len(again.data_editor[0].value) == 12
    assert again.data_editor[0].value["answer"][0] == "改过的答案。"


def test_search_then_edit_hits_the_right_row_and_add_form(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.text_input(key="ds_search").set_value("第7号").run()
    table = at.data_editor[0].value
    assert list(table["question"]) == ["第7号楼在哪里？"]
    at.session_state[at.data_editor[0].key] = {"edited_rows": {0: {"question": "七号楼在哪里？"}}}
    at.run()
    saved = _edited(ws)
    assert saved[7]["question"] == "七号楼在哪里？" and saved[6]["question"] == "第6号楼在哪里？"
    at.text_input(key="ds_new_q").set_value("图书馆几点开门？")
    at.text_area(key="ds_new_a").set_value("八点。")
    submit = [b for b in at.button if b.label == "Add"][0]
    submit.click().run()
    assert not at.exception
    assert _edited(ws)[-1]["question"] == "图书馆几点开门？"


def test_split_and_export_writes_the_dataset(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.selectbox(key="ds_format").set_value("alpaca")
    at.run()
    assert any("train **10** / dev **1** / test **1**" in m.value for m in at.markdown)
    at.button(key="ds_export").click().run()
    assert not at.exception
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "split_report.json", "dataset_info.json"):
        assert (ws.dataset_dir / name).exists(), name
    report = json.loads((ws.dataset_dir / "split_report.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"train": 10, "dev": 1, "test": 1} and report["format"] == "alpaca"
    first = json.loads((ws.dataset_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["system"] and first["instruction"]
    assert ws.meta()["dataset"]["format"] == "alpaca"
    assert {m.label: m.value for m in at.metric}["Train"] == "10"
    assert len(at.get("download_button")) == 5


def test_no_pairs_yet_explains_what_to_do(_isolated_workspaces):
    ws = Workspace.create("empty", root=_isolated_workspaces)
    at = _page(ws)
    assert not at.exception
    assert any("No pairs yet" in i.value for i in at.info)


def test_split_settings_come_from_the_schema_and_bad_values_block_export(_isolated_workspaces):
    """The split settings are the dataset schema's widgets: a bad value shows the CLI's sentence and writes nothing;
    fixed, the export runs on exactly those settings and the project remembers them for the next visit."""
    from umtcds_core.dataset import DATASET

    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    assert at.text_area(key="ds_system_prompt").value  # the campus system prompt, offered as before
    at.number_input(key="ds_r_train").set_value(0.0)
    at.number_input(key="ds_dedup_threshold").set_value(1.5).run()
    errors = [e.value for e in at.error]
    assert any("split: '0:1:1' is not three non-negative numbers with train > 0" in e for e in errors)
    assert any("dedup_threshold: 1.5 must be in (0, 1]" in e for e in errors)
    assert at.button(key="ds_export").disabled and not (ws.dataset_dir / "train.jsonl").exists()
    at.number_input(key="ds_r_train").set_value(6.0)
    at.number_input(key="ds_dedup_threshold").set_value(0.8)
    at.number_input(key="ds_seed").set_value(5)
    at.text_area(key="ds_system_prompt").set_value("").run()
    assert not at.error and not at.button(key="ds_export").disabled
    at.button(key="ds_export").click().run()
    assert not at.exception
    report = json.loads((ws.dataset_dir / "split_report.json").read_text(encoding="utf-8"))
    assert report["split"] == "6:1:1" and report["seed"] == 5 and report["dedup_threshold"] == 0.8
    assert report["system_prompt"] is None  # an emptied prompt means none
    remembered = ws.meta()["dataset"]
    assert remembered == {"split": "6:1:1", "seed": 5, "format": "glm4", "dedup_threshold": 0.8, "system_prompt": None}
    assert DATASET.problems(DATASET.merge(remembered)) == []
    again = _page(ws)  # a new session starts from what was exported
    assert again.number_input(key="ds_seed").value == 5 and again.text_area(key="ds_system_prompt").value == ""


def _generated_workspace(root: Path) -> Workspace:
    """Step 2's output with issue 15 §4's fields: kinds, paraphrases and one refusal per page."""
    ws = Workspace.create("ds-kinds", root=root)
    ws.qa_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(6):
        src = {"source": f"https://u.edu/p{i}", "file": f"p{i}.txt"}
        records.append(
            {"question": f"第{i}号楼在哪里？", "answer": f"第{i}号楼在校园{i}区。", "kind": "answerable"}
            | {"paraphrase": f"请问{i}号楼位于什么地方？"}
            | src
        )
        records.append(
            {"question": f"第{i}号楼有几部电梯？", "answer": "网站上没有提到这一点。", "kind": "unanswerable"} | src
        )
    ws.qa_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return ws


def test_kind_and_paraphrase_columns_in_both_languages(_isolated_workspaces):
    ws = _generated_workspace(_isolated_workspaces)
    at = _page(ws)
    assert not at.exception
    table = at.data_editor[0].value
    assert list(table.columns) == ["question", "answer", "kind", "paraphrase", "source"]
    assert list(table["kind"][:2]) == ["answerable", "unanswerable (refusal)"]
    assert table["paraphrase"][0] == "请问0号楼位于什么地方？"
    # the paraphrase is editable (saved on its pair); the kind label is only shown, never saved
    at.session_state[at.data_editor[0].key] = {"edited_rows": {0: {"paraphrase": "0号楼在校园的哪个位置？"}}}
    at.run()
    saved = _edited(ws)
    assert saved[0]["paraphrase"] == "0号楼在校园的哪个位置？" and saved[0]["kind"] == "answerable"
    assert saved[1]["kind"] == "unanswerable"
    at.button(key="ds_export").click().run()
    assert not at.exception
    report = json.loads((ws.dataset_dir / "split_report.json").read_text(encoding="utf-8"))
    n = report["unanswerable"]
    assert sum(n.values()) == 6
    line = f"unanswerable questions (refusal answer): train {n['train']} / dev {n['dev']} / test {n['test']}"
    assert any(line in c.value for c in at.caption)

    zh = AppTest.from_file(PAGE, default_timeout=60)
    zh.session_state["workspace"] = str(ws.root)
    zh.session_state["lang"] = "zh"
    zh.run()
    assert not zh.exception
    assert list(zh.data_editor[0].value["kind"][:2]) == ["可回答", "无法回答（拒答）"]
    headers = json.loads(zh.data_editor[0].proto.columns)
    assert headers["kind"]["label"] == "类型" and headers["paraphrase"]["label"] == "改写（仅用于评估）"
    assert any("其中无法回答的问题" in c.value for c in zh.caption)


def test_context_training_options_are_on_the_page(workspace):
    """Issue 15 §3 from the dashboard: the context choice is drawn from DatasetSettings; its options appear with it."""
    from streamlit.testing.v1 import AppTest

    from umtcds_core.fileio import write_jsonl_atomic

    write_jsonl_atomic(workspace.qa_file, [{"question": "图书馆几点开门？", "answer": "早上八点。", "source": "a.txt"}])
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(workspace.root)
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception
    assert at.radio(key="ds_context").value == "none"
    assert not [n for n in at.number_input if n.key == "ds_context_k"]  # shown only with retrieved context
    at.radio(key="ds_context").set_value("retrieved").run()
    assert at.number_input(key="ds_context_k").value == 5
    assert at.number_input(key="ds_context_copies").value == 1  # one record per question unless asked
    assert any("index" in e.value for e in at.error)  # retrieved without an index: the CLI's sentence, export blocked


def test_a_pairs_masked_text_is_what_the_llm_was_sent(_isolated_workspaces):
    """A real generate run (fake LLM) on a page with a mobile number: the page shows, for that page's pairs only, the
    text the LLM got (the placeholder, the office phone kept) and what was masked."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fake_llm_server import FakeLLMServer

    from umtcds_core.llm import OpenAIBackend, RetryPolicy
    from umtcds_core.qa import GenSettings, generate

    ws = Workspace.create("pii", root=_isolated_workspaces)
    ws.pages_dir.mkdir(parents=True)
    (ws.pages_dir / "award.txt").write_text(
        "奖学金评审通知\n\n本年度国家奖学金评审工作于十月开始，申请截止日期为十月十五日。\n"
        "联系人张老师，手机 13812345678，办公电话 010-62751234。\n",
        encoding="utf-8",
    )
    (ws.pages_dir / "library.txt").write_text(
        "图书馆开放时间\n\n图书馆每天早上七点半开馆，晚上十点闭馆。借书需要携带校园卡，每人最多借二十本。\n",
        encoding="utf-8",
    )
    settings = GenSettings(backend="openai", clean=False, pairs_per_page=2, unanswerable=0, paraphrase=False)
    with FakeLLMServer(api_key="sk-test") as srv:
        backend = OpenAIBackend("fake-model", "sk-test", srv.openai_base, timeout=5, retry=RetryPolicy(base_delay=0.01))
        generate(ws.pages_dir, ws.qa_dir, backend, settings)
    at = _page(ws)
    assert not at.exception
    pick = at.selectbox(key="ds_masked_pick")
    pairs = [json.loads(x) for x in ws.qa_file.read_text(encoding="utf-8").splitlines()]
    award = {p["question"][:80] for p in pairs if p["file"] == "award.txt"}
    assert set(pick.options) == award  # the library page had nothing masked
    shown = "\n".join(c.value for c in at.code)
    assert "[手机号]" in shown and "13812345678" not in shown and "010-62751234" in shown
    assert any("mobile numbers × 1" in c.value for c in at.caption)
