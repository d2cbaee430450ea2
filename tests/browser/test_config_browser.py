"""The Config page's round trip in a real browser (issue 21 §2): what is saved is exactly what the fields show.

AppTest checks the script's values; only a browser shows what the user SEES in the inputs after "reset to the
preset" or a method switch (a keyed widget used to keep the browser's old number while the preview changed), and
what happens to a number typed outside its range (the browser used to refuse it silently, and Save kept the old one).
"""

from __future__ import annotations

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

from umtcds_core import config as C
from umtcds_core.workspace import Workspace

pytestmark = [pytest.mark.browser]

WS_NAME = "config-walk"


def _field(page, label: str):
    return main_area(page).get_by_label(label, exact=True)


def _type(page, label: str, value) -> None:
    box = _field(page, label)
    box.wait_for(timeout=WAIT_MS)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def _shown(page, label: str) -> float:
    return float(_field(page, label).input_value())


def _preview(page) -> str:
    code = main_area(page).locator('[data-testid="stCode"]').filter(has_text="# UMTCDS training config").first
    code.wait_for(timeout=WAIT_MS)
    return code.inner_text()


def test_reset_method_switch_out_of_range_and_save_equals_preview(dashboard, page):
    open_dashboard(page, dashboard)
    set_language(page, "en")
    create_workspace(page, WS_NAME)
    main = main_area(page)
    main.get_by_text(f"Steps — {WS_NAME}").wait_for(timeout=WAIT_MS)
    ws = Workspace.open(dashboard.workspaces / WS_NAME)
    ws.dataset_dir.mkdir(parents=True, exist_ok=True)
    (ws.dataset_dir / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")

    page.locator('[data-testid="stSidebarNav"]').get_by_text("4 · Config", exact=True).click()
    _field(page, "Learning rate").wait_for(timeout=WAIT_MS)
    wait_idle(page)
    preset = C.preset_for("lora", "smollm2-135m")

    # absurd but legal values: shown, previewed, warned about
    _type(page, "Learning rate", 0.5)
    _type(page, "Batch size", 512)
    _type(page, "Max input length (tokens)", 32768)
    expect(main.get_by_text(re.compile("learning_rate 0.5 is unusually high"))).to_be_visible(timeout=WAIT_MS)
    expect(main.get_by_text(re.compile("more than any single card"))).to_be_visible(timeout=WAIT_MS)
    shot(page, "config-absurd-values")

    # reset: the FIELDS show the preset again, and the preview agrees with them
    main.get_by_role("button", name=re.compile(r"^Reset to the preset")).click()
    wait_idle(page)
    expect(_field(page, "Batch size")).to_have_value(str(preset.per_device_batch_size), timeout=WAIT_MS)
    expect(_field(page, "Max input length (tokens)")).to_have_value(str(preset.max_input_length), timeout=WAIT_MS)
    wait_until(lambda: _shown(page, "Learning rate") == preset.learning_rate, "the learning rate field to reset")
    assert f"per_device_batch_size: {preset.per_device_batch_size}" in _preview(page)

    # method switch and back: the preset's rank is in the field and in the preview
    _type(page, "Rank r", 64)
    main.get_by_text("ptuning-v2", exact=True).click()
    _field(page, "Virtual tokens (prefix length)").wait_for(timeout=WAIT_MS)
    wait_idle(page)
    main.get_by_text("lora", exact=True).click()
    expect(_field(page, "Rank r")).to_have_value(str(preset.lora_r), timeout=WAIT_MS)
    wait_idle(page)

    # save: the file is exactly the preview
    main.get_by_role("button", name="Save to the project").click()
    wait_until(ws.config_file.exists, "config.yaml to be written")
    expect(main.get_by_text(re.compile(r"^Saved"))).to_be_visible(timeout=WAIT_MS)
    saved = ws.config_file.read_text(encoding="utf-8")
    assert saved.strip() == _preview(page).strip()

    # out of range: the number stays as typed, a sentence says why, Save is blocked, the file is kept
    _type(page, "Rank r", 0)
    expect(main.get_by_text(re.compile("lora_r: 0 is out of range")).first).to_be_visible(timeout=WAIT_MS)
    expect(_field(page, "Rank r")).to_have_value("0", timeout=WAIT_MS)
    expect(main.get_by_role("button", name="Save to the project")).to_be_disabled(timeout=WAIT_MS)
    shot(page, "config-out-of-range")
    assert ws.config_file.read_text(encoding="utf-8") == saved
