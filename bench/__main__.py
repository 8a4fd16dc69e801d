"""``python -m bench [name ...]``: run benchmarks and write their sections into BENCHMARKS.md.

Each benchmark module exposes ``run() -> str`` (a Markdown body); its section in BENCHMARKS.md,
``## <title>``, is replaced and other sections are left alone.
"""

from __future__ import annotations

import importlib
import platform
import re
import sys
from datetime import date
from pathlib import Path

# name -> (module, section title)
BENCHMARKS = {"emulator": ("bench.emulator_bench", "Emulator")}
_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_HEADER = "# Benchmarks\n\nNumbers from `python -m bench` (`make bench`). Each section says how it was measured.\n"


def _replace_section(text: str, title: str, body: str) -> str:
    section = f"## {title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    return text.rstrip() + "\n\n" + section


def main(argv: list[str]) -> None:
    """Run the named benchmarks (default: all) and update BENCHMARKS.md."""
    names = argv or list(BENCHMARKS)
    text = _FILE.read_text(encoding="utf-8") if _FILE.exists() else _HEADER
    for name in names:
        module_name, title = BENCHMARKS[name]
        body = importlib.import_module(module_name).run()
        command = f"python -m bench {name}"
        stamp = f"{date.today().isoformat()}, {platform.python_implementation()} {platform.python_version()}"
        body = f"Command: `{command}` ({stamp}).\n\n{body}"
        print(f"## {title}\n\n{body}\n")
        text = _replace_section(text, title, body)
    _FILE.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
