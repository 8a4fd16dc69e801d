"""``python -m bench [name ...]``: run benchmarks and write their sections into BENCHMARKS.md.

Each benchmark module exposes ``run() -> str`` (a Markdown body); its section in BENCHMARKS.md,
``## <title>``, is replaced and other sections are left alone.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import re
import sys
from datetime import date
from pathlib import Path

# name -> (module, section title)
BENCHMARKS = {
    "control_plane": ("bench.control_plane_bench", "Control-plane calls"),
    "emulator": ("bench.emulator_bench", "Emulator"),
    "fixed": ("bench.fixed_cost_bench", "Fixed cost"),
    "floor": ("bench.design_floor_bench", "Pipeline: design floor"),
    "pipeline": ("bench.pipeline_bench", "Pipeline"),
    "reconcile": ("bench.reconcile_bench", "Crash reconciliation"),
    "scale": ("bench.scale_bench", "Scale"),
}
_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_HEADER = "# Benchmarks\n\nNumbers from `python -m bench` (`make bench`). Each section says how it was measured.\n"


def _replace_section(text: str, title: str, body: str) -> str:
    section = f"## {title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    return text.rstrip() + "\n\n" + section


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="name")
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="pipeline, floor: input rows (1,000,000); scale: (10,000,000); fixed: (10,000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="pipeline: timed pairs (2); floor: runs of each step (2); fixed: runs of each kind "
        "(3); reconcile: rounds (3)",
    )
    parser.add_argument(
        "--memory-rows", default=None, help="pipeline: further sizes, comma-separated (100000)"
    )
    parser.add_argument(
        "--partitions", default=None, help="scale: input partitionings, comma-separated (2,400)"
    )
    return parser.parse_args(argv)


def _options(name: str, args: argparse.Namespace) -> tuple[dict[str, object], str]:
    """Keyword arguments of ``name``'s ``run`` and their command-line spelling."""
    options: dict[str, object] = {}
    flags = ""
    if name == "reconcile" and args.repeats is not None:
        return {"repeats": args.repeats}, f" --repeats {args.repeats}"
    if name not in ("pipeline", "scale", "fixed", "floor"):
        return {}, ""
    if args.rows is not None:
        options["rows"] = args.rows
        flags += f" --rows {args.rows}"
    if name == "scale":
        if args.partitions is not None:
            options["partitionings"] = tuple(int(n) for n in args.partitions.split(",") if n)
            flags += f" --partitions {args.partitions}"
        return options, flags
    if args.repeats is not None:
        options["repeats"] = args.repeats
        flags += f" --repeats {args.repeats}"
    if name == "pipeline" and args.memory_rows is not None:
        options["memory_rows"] = tuple(int(n) for n in args.memory_rows.split(",") if n)
        flags += f" --memory-rows {args.memory_rows}"
    return options, flags


def main(argv: list[str]) -> None:
    """Run the named benchmarks (default: all) and update BENCHMARKS.md."""
    args = _parse(argv)
    names = args.names or list(BENCHMARKS)
    text = _FILE.read_text(encoding="utf-8") if _FILE.exists() else _HEADER
    for name in names:
        module_name, title = BENCHMARKS[name]
        options, flags = _options(name, args)
        body = importlib.import_module(module_name).run(**options)
        command = f"python -m bench {name}{flags}"
        stamp = f"{date.today().isoformat()}, {platform.python_implementation()} {platform.python_version()}"
        body = f"Command: `{command}` ({stamp}).\n\n{body}"
        print(f"## {title}\n\n{body}\n")
        text = _replace_section(text, title, body)
    _FILE.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
