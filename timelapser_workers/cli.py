"""The `timelapser-workers` command line. Library code logs; only this module (and the demo
it runs) prints."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from timelapser_workers import demo

    parser = argparse.ArgumentParser(prog="timelapser-workers")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run the demo workload and print what batching saved")
    demo.add_arguments(demo_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from timelapser_workers.demo import run_demo

        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
