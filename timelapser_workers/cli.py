"""The `timelapser-workers` command line. Library code logs; only this module prints."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timelapser-workers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the demo workload and print what batching saved")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from timelapser_workers.quickstart import main as quickstart

        return quickstart()
    return 2


if __name__ == "__main__":
    sys.exit(main())
