import json
import subprocess
import sys

from umtcds_core.cli import COMMANDS, main


def test_help_lists_every_step(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("crawl", "generate", "dataset", "config", "train", "chat", "evaluate", "serve", "demo", "doctor"):
        assert name in out and name in COMMANDS


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "umtcds_core.cli", "fly"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_doctor_json_reports_the_machine():
    proc = subprocess.run(
        [sys.executable, "-m", "umtcds_core.cli", "doctor", "--json", "--skip-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["packages"]["transformers"]
    assert report["cuda_available"] in (True, False)
    assert report["disk"]["free_gib"] > 0


def test_user_errors_print_one_sentence_and_exit_1(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from umtcds_core.cli import main; from umtcds_core.errors import UserError\n"
            "import umtcds_core.doctor as d\n"
            "def boom(a): raise UserError('The disk is full; free space and retry.')\n"
            "d.run = boom\nraise SystemExit(main(['doctor']))",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: The disk is full; free space and retry."


def test_user_errors_also_print_their_chinese_sentence_for_the_chinese_dashboard(tmp_path):
    """A job the dashboard starts in Chinese (UMTCDS_LANG=zh) prints the English line tools read and the Chinese
    one; the job's error summary (what the page shows) gives either, in the page's language (issue 21 §6: never both
    back to back); without the variable only English is printed."""
    import os

    from umtcds_core.jobs import start_job
    from umtcds_core.workspace import Workspace

    argv = [sys.executable, "-m", "umtcds_core.cli", "crawl", "www.example.edu.cn", "--out", str(tmp_path / "pages")]
    env = {k: v for k, v in os.environ.items() if k != "UMTCDS_LANG"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "Error: 'www.example.edu.cn' has no http://" in proc.stderr and "错误" not in proc.stderr
    ws = Workspace.create("campus", root=tmp_path)
    job = start_job(ws, "crawl", argv, env={"UMTCDS_LANG": "zh"})
    assert job.wait(timeout=120) == "failed"
    assert "Error: 'www.example.edu.cn' has no http://" in job.error_summary(lang="en")
    assert "错误：“www.example.edu.cn”前面缺少 http:// 或 https://" in job.error_summary(lang="zh")
    assert "Error:" not in job.error_summary(lang="zh") and "错误" not in job.error_summary(lang="en")
