"""Command line: ``python -m exercises list`` and ``python -m exercises check N [--solution]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import EXERCISES, check, module, number_of


def _list() -> int:
    root = Path(__file__).parent
    for number, folder in EXERCISES.items():
        title = module(number, "check").TITLE.split(": ", 1)[-1]
        print(f"{number:>2}  {title:45s} exercises/{folder}/")
    print(f"\nRead exercises/<folder>/README.md, edit stub.py, then: python -m exercises check N"
          f"\n({len(EXERCISES)} exercises under {root})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exercises", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the exercises")
    run = sub.add_parser("check", help="check an exercise against dsf")
    run.add_argument("exercise", help="its number, e.g. 1")
    run.add_argument("--solution", action="store_true",
                     help="check the reference solution instead of your stub")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    try:
        number = number_of(args.exercise)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    return 0 if check(number, solution=args.solution) else 1


if __name__ == "__main__":
    sys.exit(main())
