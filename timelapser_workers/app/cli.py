"""The `timelapser-workers` command line. Library code logs; only this module (and the demo
it runs) prints."""

from __future__ import annotations

import argparse
import logging
import sys

from timelapser_workers._version import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from timelapser_workers.app import demo

    parser = argparse.ArgumentParser(prog="timelapser-workers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run the demo workload and print what batching saved")
    demo.add_arguments(demo_parser)
    sinks = sub.add_parser("sinks", help="list the available sinks and where each comes from")
    sinks.add_argument("--check", action="store_true", help="also import each one and report errors")
    from timelapser_workers.app import dead_letters

    dead = sub.add_parser("dead-letters", help="list, show, replay or purge the dead letters")
    dead_letters.add_arguments(dead)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from timelapser_workers.app.demo import run_demo

        return run_demo(args)
    if args.command == "sinks":
        return list_sinks(check=args.check)
    if args.command == "dead-letters":
        from timelapser_workers.app.dead_letters import run

        return run(args)
    return 2


def list_sinks(check: bool = False) -> int:
    """Print every sink name, its target and origin; with ``check``, load each. 1 if any failed."""
    # The CLI is an application of the library, so it may reach the sinks package; the core
    # modules never do.
    from timelapser_workers.sinks.registry import available_sinks

    infos = available_sinks()
    names = [i.name for i in infos]
    rows = []
    failed = False
    for info in infos:
        status = "conflict" if names.count(info.name) > 1 else ""
        if check:
            try:
                info.load()
                status = status or "ok"
            except Exception as exc:  # SinkLoadError: a broken plugin
                status = f"error: {exc}"
                failed = True
        rows.append((info.name, info.target, info.origin, status))
    if not rows:
        print("no sinks found (is timelapser-workers installed? pip install -e .)")
        return 1
    width = [max(len(r[i]) for r in rows + [("name", "target", "from", "")]) for i in range(3)]
    print(f"{'name':<{width[0]}}  {'target':<{width[1]}}  {'from':<{width[2]}}  status")
    for name, target, origin, status in rows:
        print(f"{name:<{width[0]}}  {target:<{width[1]}}  {origin:<{width[2]}}  {status}".rstrip())
    return 1 if failed or any(r[3] == "conflict" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
