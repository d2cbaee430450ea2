import pytest

from umtcds_core.runs import has_final_model
from umtcds_core.workspace import DONE, NOT_STARTED, Workspace, WorkspaceError, list_workspaces


def test_create_lists_and_layout(tmp_path):
    ws = Workspace.create("my-campus", root=tmp_path)
    assert ws.meta()["name"] == "my-campus"
    assert [w.name for w in list_workspaces(tmp_path)] == ["my-campus"]
    assert ws.qa_file == ws.root / "qa" / "qa.jsonl"
    assert ws.dataset_dir == ws.root / "dataset"


@pytest.mark.parametrize("bad", ["", "../evil", "a/b", "x" * 65, ".."])
def test_bad_names_get_a_clear_message(tmp_path, bad):
    with pytest.raises(WorkspaceError, match="workspace name"):
        Workspace.create(bad, root=tmp_path)


def test_paths_outside_the_workspace_are_refused(tmp_path):
    ws = Workspace.create("w", root=tmp_path)
    (tmp_path / "precious.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.remove("../precious.txt")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.inside(tmp_path / "precious.txt")
    assert (tmp_path / "precious.txt").exists()
    with pytest.raises(WorkspaceError):
        ws.remove(".")
    (ws.pages_dir).mkdir()
    (ws.pages_dir / "a.txt").write_text("x", encoding="utf-8")
    ws.remove("pages/a.txt")
    assert not (ws.pages_dir / "a.txt").exists()


def test_status_is_read_from_files(tmp_path):
    ws = Workspace.create("w", root=tmp_path)
    assert set(ws.statuses().values()) == {NOT_STARTED}
    ws.pages_dir.mkdir()
    (ws.pages_dir / "index.txt").write_text("Library", encoding="utf-8")
    ws.qa_dir.mkdir()
    ws.qa_file.write_text('{"question":"q","answer":"a"}\n', encoding="utf-8")
    ws.config_file.write_text("method: lora\n", encoding="utf-8")
    run = ws.new_run_dir()
    run.mkdir(parents=True)
    (run / "checkpoint-5").mkdir()
    assert not has_final_model(run)
    (run / "adapter_config.json").write_text("{}", encoding="utf-8")
    st = ws.statuses()
    assert st["crawl"] == st["generate"] == st["config"] == st["train"] == DONE
    assert st["dataset"] == st["evaluate"] == NOT_STARTED
