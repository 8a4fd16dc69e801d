"""The command line: ``python -m spark_llm_batch`` (or ``spark-llm-batch``) ``run`` | ``status``.

Usage::

    spark-llm-batch run --config conf/example_job.yaml [--no-wait]
    spark-llm-batch status --store /lake/llm_store [--prices my_prices.yaml] [--watch 30] [--json]

``run`` exits 0 when every row is answered (or, detached, when the batches are in flight), 1 when
some rows failed, 2 on bad configuration; ``status`` exits 0, or 2 when the store cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

_nap = time.sleep  # between two --watch refreshes (a test replaces it)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-llm-batch",
        description="LLM prompts over Spark tables through batch APIs.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the job a YAML file describes (see conf/)", allow_abbrev=False
    )
    run.add_argument("--config", required=True, help="the job's YAML file")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="detached: submit what is new, collect what has ended, and return; run it again "
        "later (e.g. hourly) to pick up where it stopped",
    )
    status = commands.add_parser(
        "status", help="batches, requests, tokens and cost of a store", allow_abbrev=False
    )
    status.add_argument("--store", required=True, help="the store: a path or catalog.schema")
    status.add_argument(
        "--prices",
        action="append",
        default=[],
        metavar="FILE",
        help="a price table layered over conf/prices.yaml (repeatable; later files win)",
    )
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=30.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 30) until interrupted",
    )
    status.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "run":
        from spark_llm_batch._job import main as run_job

        return run_job(args.config, no_wait=args.no_wait)
    return _status(args)


def _status(args: argparse.Namespace) -> int:
    from spark_llm_batch._prices import PriceTable
    from spark_llm_batch._status import status
    from spark_llm_batch._store import Store
    from spark_llm_batch.errors import ConfigError, StoreError
    from spark_llm_batch.session import get_session

    if args.watch is not None and args.watch <= 0:
        print("error: --watch takes a positive number of seconds", file=sys.stderr)
        return 2
    try:
        prices = PriceTable.load(args.prices)
        store = Store.open(get_session(), args.store, create=False)
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    while True:
        report = status(store, prices=prices)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\033[2J\033[H", end="")  # clear the screen: the figures stay in place
            print(report, flush=True)
        if args.watch is None:
            return 0
        try:
            _nap(args.watch)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
