"""`modelchip` command line: one subcommand per job, each with --help and --json."""

from __future__ import annotations

import argparse
import sys

from modelchip import __version__
from modelchip.cli import (
    calibrate_cmd,
    chips_cmd,
    compare_cmd,
    conformance_cmd,
    generate_cmd,
    models_cmd,
    plan_cmd,
    predict_cmd,
    serve_cmd,
    validate_cmd,
)
from modelchip.errors import ModelchipError

# what `pip install 'modelchip[runtime]'` adds; compare, predict, plan, models, kv, chips and validate need none
RUNTIME_MODULES = ("torch", "safetensors", "tokenizers", "jinja2")

COMMANDS = (compare_cmd, chips_cmd, models_cmd, generate_cmd, predict_cmd, plan_cmd, validate_cmd, calibrate_cmd,
            serve_cmd, conformance_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelchip",
        description="Model-chip co-design for LLM inference: what a model costs on a chip, and why.",
    )
    parser.add_argument("--version", action="version", version=f"modelchip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in RUNTIME_MODULES:
            raise
        print(f"modelchip {args.command}: error: this command runs models, which needs the runtime extra "
              f"(missing module {exc.name!r}): pip install 'modelchip[runtime]'", file=sys.stderr)
        return 2
    except ModelchipError as exc:
        print(f"modelchip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # piping into `head` is not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
