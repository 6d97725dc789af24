"""Command line: ``python -m bdlib run --profile default`` and ``python -m bdlib data``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .profiles import PROFILES
from .registry import UnknownNameError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bdlib", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute every notebook in order with papermill (headless)")
    run.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES.names())}")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--only", help="regular expression: run only the notebooks whose file name matches")
    run.add_argument("--output-dir", type=Path, help="write executed notebooks here instead of in place")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' own output")
    data = sub.add_parser("data", help="synthesise (or verify) the embedded dataset of a profile")
    data.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES.names())}")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "run":
            from .runner import run_all

            return run_all(args.profile, args.seed, args.output_dir, args.only, args.log_output)
        if args.cmd == "data":
            from .pipeline import load_experiment

            exp = load_experiment(args.profile)
            print(f"{len(exp.manifest)} clips in {exp.dataset_dir} (verified against their sha256)")
            return 0
    except UnknownNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
