"""The price table: what a model's tokens cost at batch prices (``conf/prices.yaml``).

A table maps model names to USD per million input and output tokens. Users extend it with their
own YAML files, of the same shape, layered over the default one (a later file wins per model)::

    currency: USD
    per_million_tokens:
      gpt-4o-mini: {input: 0.075, output: 0.30}

A model is priced by its exact name, or else by the longest name in the table that it starts with
(``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_llm_batch.errors import ConfigError

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable"]

_REPO_CONF = Path(__file__).resolve().parents[1] / "conf" / "prices.yaml"
_INSTALLED_CONF = Path(sys.prefix) / "share" / "spark-llm-batch" / "conf" / "prices.yaml"


def _default_file() -> Path | None:
    """``conf/prices.yaml``: beside the package in a checkout (and an editable install), else
    where a wheel installs it (``<prefix>/share/spark-llm-batch/conf``)."""
    for path in (_REPO_CONF, _INSTALLED_CONF):
        if path.is_file():
            return path
    return None


DEFAULT_PRICES = _default_file()
"""The default price table's file (``None`` when neither location holds it)."""


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of the given tokens.

        Example:
            >>> Price(input=0.075, output=0.30).cost(1_000_000, 500_000)
            0.225
        """
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Model name -> :class:`Price`, in one currency."""

    prices: Mapping[str, Price]
    currency: str = "USD"

    @classmethod
    def load(cls, extra: str | Path | Iterable[str | Path] | None = None) -> PriceTable:
        """The default table with ``extra`` files layered over it, in order.

        Raises:
            ConfigError: a file is missing, is not YAML, or does not hold the table's shape
                (the message names the file and the entry).
        """
        if isinstance(extra, (str, Path)):
            extra = [extra]
        files = [p for p in [DEFAULT_PRICES, *(Path(e) for e in extra or ())] if p is not None]
        prices: dict[str, Price] = {}
        currency: str | None = None
        for file in files:
            found, in_currency = _read(file)
            if currency is not None and in_currency != currency:
                raise ConfigError(
                    f"price table {file} is in {in_currency}, the others in {currency}"
                )
            prices.update(found)
            currency = in_currency
        return cls(prices, currency or "USD")

    def price(self, model: str) -> Price | None:
        """The price of ``model`` (its name, else the longest listed prefix); ``None`` if unlisted.

        Example:
            >>> PriceTable({"gpt-4o": Price(1.25, 5.0), "gpt-4o-mini": Price(0.075, 0.3)}).price(
            ...     "gpt-4o-mini-2024-07-18")
            Price(input=0.075, output=0.3)
        """
        if model in self.prices:
            return self.prices[model]
        matches = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(matches, key=len)] if matches else None


def _read(file: Path) -> tuple[dict[str, Price], str]:
    from spark_llm_batch.config import load_yaml

    data = load_yaml(file, "price table")
    table = data.get("per_million_tokens")
    if not isinstance(table, dict):
        raise ConfigError(
            f"price table {file}: expected a mapping 'per_million_tokens: {{model: {{input: ..., "
            "output: ...}}}}'"
        )
    unknown = sorted(set(data) - {"currency", "per_million_tokens"})
    if unknown:
        raise ConfigError(f"price table {file}: unknown key(s) {unknown}")
    currency = str(data.get("currency", "USD"))
    return {str(m): _price(file, str(m), v) for m, v in table.items()}, currency


def _price(file: Path, model: str, value: Any) -> Price:
    if not isinstance(value, dict) or set(value) != {"input", "output"}:
        raise ConfigError(
            f"price table {file}: per_million_tokens.{model} must be {{input: <number>, output: "
            f"<number>}}, not {value!r}"
        )
    try:
        price = Price(float(value["input"]), float(value["output"]))
    except (TypeError, ValueError):
        raise ConfigError(
            f"price table {file}: per_million_tokens.{model} holds a non-number: {value!r}"
        ) from None
    if price.input < 0 or price.output < 0:
        raise ConfigError(f"price table {file}: per_million_tokens.{model} is negative")
    return price
