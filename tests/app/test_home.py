from pathlib import Path

from streamlit.testing.v1 import AppTest

HOME = str(Path(__file__).resolve().parents[2] / "Home.py")


def _create_button(at: AppTest):
    return next(b for b in at.button if b.label in ("创建项目", "Create project"))


def _home() -> AppTest:
    return AppTest.from_file(HOME, default_timeout=60)


def test_home_renders_in_chinese_by_default_and_in_english():
    at = _home().run()
    assert not at.exception
    assert "校园问答" in at.title[0].value
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception
    assert "campus Q&A" in at.title[0].value


def test_create_a_workspace_and_see_every_step_status(_isolated_workspaces):
    at = _home().run()
    at.session_state["lang"] = "en"
    at.run()
    at.text_input(key="_ws_new_name").set_value("qingshan")
    _create_button(at).click()
    at.run()
    assert not at.exception
    assert (_isolated_workspaces / "qingshan" / "workspace.json").exists()
    assert any("Steps — qingshan" in s.value for s in at.subheader)
    statuses = [m.value for m in at.markdown if "not started" in m.value]
    assert len(statuses) == 7


def test_bad_workspace_name_shows_a_message(_isolated_workspaces):
    at = _home().run()
    at.text_input(key="_ws_new_name").set_value("../escape")
    _create_button(at).click()
    at.run()
    assert not at.exception
    assert any("“../escape”不能用作项目名" in e.value for e in at.error)  # the dashboard's default language
    assert not any(_isolated_workspaces.parent.glob("escape"))
    at.session_state["lang"] = "en"
    at.run()
    at.text_input(key="_ws_new_name").set_value("../escape")
    _create_button(at).click()
    at.run()
    assert any("'../escape' is not a usable workspace name" in e.value for e in at.error)


def test_password_gate(monkeypatch):
    monkeypatch.setenv("UMTCDS_PASSWORD", "s3cret-campus")
    at = _home().run()
    assert not at.exception
    assert not at.subheader  # nothing of the app before the password
    at.text_input(key="login_password").set_value("wrong")
    at.button[0].click()
    at.run()
    assert any("密码不正确" in e.value for e in at.error)
    at.text_input(key="login_password").set_value("s3cret-campus")
    at.button[0].click()
    at.run()
    assert at.session_state["authenticated"] is True
    assert "校园问答" in at.title[0].value


def test_public_address_without_password_warns():
    at = _home()
    at.run()
    assert not any("UMTCDS_PASSWORD" in w.value for w in at.warning)  # the test server binds loopback (config.toml)
    from umtcds_core.secrets import public_without_password

    assert public_without_password("0.0.0.0") is True
    assert public_without_password("127.0.0.1") is False
