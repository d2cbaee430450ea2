"""The Home page in a real browser: password gate, Chinese by default, English on switch, creating a project.

Runs the real ``streamlit run Home.py`` server (see conftest.py) in headless Debian Chromium; screenshots go to
``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import re

import pytest
from browser_helpers import (
    WAIT_MS,
    create_workspace,
    main_area,
    open_dashboard,
    set_language,
    shot,
    wait_idle,
    wait_until,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_password_gate_refuses_a_wrong_password(dashboard, page):
    page.goto(dashboard.url)
    page.get_by_label(re.compile("^(密码|Password)$")).fill("not-the-password")
    page.get_by_role("button", name=re.compile("^(进入|Enter)$")).click()
    page.get_by_text("密码不正确。").wait_for(timeout=WAIT_MS)
    expect(page.get_by_text("UMTCDS · 校园问答助手微调工具")).to_have_count(0, timeout=WAIT_MS)
    shot(page, "home-0-wrong-password")


def test_home_renders_in_chinese_then_english_and_creates_a_project(dashboard, page):
    open_dashboard(page, dashboard)

    # Chinese is the default language.
    main = main_area(page)
    main.get_by_text("UMTCDS · 校园问答助手微调工具").wait_for(timeout=WAIT_MS)
    expect(main.get_by_text("先创建一个项目，所有步骤的文件都保存在其中。")).to_be_visible(timeout=WAIT_MS)
    sidebar = page.locator('[data-testid="stSidebar"]')
    for label in ("1 · 爬取网页", "2 · 生成问答", "5 · 训练"):
        sidebar.get_by_text(label).first.wait_for(timeout=WAIT_MS)
    shot(page, "home-1-zh")

    # Switching the language re-renders the page in English.
    set_language(page, "en")
    main.get_by_text("UMTCDS · campus Q&A assistant builder").wait_for(timeout=WAIT_MS)
    expect(main.get_by_text("Create a project first; every step's files live in it.")).to_be_visible(timeout=WAIT_MS)
    sidebar.get_by_text("1 · Crawl").first.wait_for(timeout=WAIT_MS)
    expect(main.get_by_text("校园问答助手微调工具")).to_have_count(0, timeout=WAIT_MS)
    shot(page, "home-2-en")

    # Creating a project makes a workspace folder and shows every step's status.
    create_workspace(page, "browser-campus")
    main.get_by_text("Steps — browser-campus").wait_for(timeout=WAIT_MS)
    for label in ("1 · Crawl", "3 · Dataset", "5 · Train"):
        main.get_by_text(label).first.wait_for(timeout=WAIT_MS)  # page links load lazily: wait, do not count
    main.get_by_text("not started").first.wait_for(timeout=WAIT_MS)
    wait_idle(page)
    ws_dir = dashboard.workspaces / "browser-campus"
    wait_until(lambda: (ws_dir / "workspace.json").exists(), "workspace.json of the new project")
    assert json.loads((ws_dir / "workspace.json").read_text(encoding="utf-8"))["name"] == "browser-campus"
    shot(page, "home-3-project-created")

    # Back to Chinese: the same project, Chinese labels.
    set_language(page, "zh")
    main.get_by_text("步骤状态 — browser-campus").wait_for(timeout=WAIT_MS)
    shot(page, "home-4-zh-project")
    assert not page.js_errors, page.js_errors
