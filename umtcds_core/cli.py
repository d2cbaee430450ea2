"""``umtcds`` — every dashboard step as a command, over the same core functions.

Usage::

    umtcds crawl URL --out DIR [--depth 1] [--max-pages 500] …
    umtcds generate IN_DIR --out OUT_DIR --backend {local,zhipuai,openai} …
    umtcds dataset IN --out DATA_DIR [--split 8:1:1] [--seed 42] [--format glm4|sharegpt|alpaca]
    umtcds config --method {lora,qlora,ptuning-v2,full} --model NAME|PATH --data DATA_DIR --out config.yaml …
    umtcds train config.yaml [--resume auto|no|CHECKPOINT_DIR]
    umtcds chat --model NAME|PATH [--adapter DIR] [--prompt TEXT]
    umtcds evaluate --model NAME|PATH [--adapter DIR] --data test.jsonl [--out metrics.json]
    umtcds serve --model NAME|PATH [--adapter DIR] [--host 127.0.0.1] [--port 8000]
    umtcds demo [--workspace DIR]
    umtcds doctor

The commands, their modules and one-line help come from the step registry (``steps.py``). Each subcommand lives in
its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen module is imported,
so ``umtcds crawl`` never pays for importing torch. No Streamlit import here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError
from .i18n import current_lang
from .steps import STEPS

# command -> (module, one-line help), read from the one step registry (umtcds_core.steps)
COMMANDS: dict[str, tuple[str, str]] = {s.command: (s.module, s.help) for s in STEPS}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="umtcds",
        description="UMTCDS: turn a university website into a fine-tuned campus Q&A assistant.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        _top_parser().print_help()
        return 0 if argv else 2
    if argv[0] in {"-V", "--version"}:
        from . import __version__

        print(f"umtcds {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        _top_parser().parse_args(argv[:1])  # prints the usage error and exits 2
    module_name, help_ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"umtcds {command}: not built yet.", file=sys.stderr)
            return 2
        raise
    if not hasattr(module, "run"):
        print(f"umtcds {command}: not built yet.", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"umtcds {command}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if exc.zh and current_lang() == "zh":  # a job the dashboard started in Chinese
            print(f"错误：{exc.zh}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; what was already written is kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
