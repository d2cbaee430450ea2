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
