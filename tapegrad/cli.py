"""The ``tapegrad`` command. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tapegrad",
        description="Record, inspect, replay and differentiate NumPy computations saved as tapes.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="record a small MLP training step and replay its gradients",
        description="Record one training step of a small MLP on the spiral data set, print the "
        "tape's listing, and show that gradients replayed from the tape equal the live ones.",
        epilog="example: tapegrad demo",
    )
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
