"""Prompts built from a template over columns, rendered in the JVM as one Spark expression.

``template="Classify this review: {review_text}\\nProduct: {product}"``: each ``{name}`` is
replaced by row's value of the column ``name`` (``{{`` and ``}}`` are literal braces). The rendered
prompt is what the encoder hashes and sends, so changing the template sends new requests, and
rows that render alike are sent once.

Rules (checked when the config is built, and against the DataFrame before anything is sent):

- a placeholder names a top-level column exactly (``{my col}`` and ``{a.b}`` are names too);
  format specs, conversions and positional fields (``{x:>5}``, ``{x!r}``, ``{}``) are refused;
- a column that is not a string is rendered as ``CAST(col AS STRING)`` renders it (``42``,
  ``4.5``, ``true``, ``[a, b]``);
- nulls follow ``template_nulls``: ``"invalid"`` (the default) sends nothing for the row, which
  fails ``invalid_input`` with a message naming its null columns; ``"empty"`` renders a null as
  empty text.

Example:
    >>> t = PromptTemplate.parse("Review: {text} ({stars} stars) {{raw}}")
    >>> t.columns
    ('text', 'stars')
    >>> t.pieces
    (('Review: ', 'text'), (' (', 'stars'), (' stars) {raw}', None))
"""

from __future__ import annotations

import string
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import Column

__all__ = ["NullRule", "PromptTemplate"]

NullRule = Literal["invalid", "empty"]


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: literal text and the column that follows each piece of it.

    Attributes:
        text: the template as given.
        pieces: ``(literal, column)`` pairs in order; the last pair's column may be ``None``.
    """

    text: str
    pieces: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> PromptTemplate:
        """Parse ``text``.

        Raises:
            ConfigError: unbalanced braces, a format spec or conversion, an empty placeholder,
                or no placeholder at all.
        """
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(
                f"template {text!r} does not parse ({exc}): write a literal brace as {{{{ or }}}}"
            ) from None
        pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if pieces and pieces[-1][1] is None:  # a brace pair splits text: join it back
                literal = pieces.pop()[0] + literal
            if name is None:
                pieces.append((literal, None))
                continue
            if not name.strip():
                raise ConfigError(
                    f"template {text!r} has an empty placeholder {{}}: name a column, e.g. {{review}}"
                )
            if spec or conversion:
                shown = (
                    name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                )
                raise ConfigError(
                    f"template placeholder {{{shown}}} has a format spec or conversion: only plain "
                    f"column names are rendered (format the column first, then use {{{name}}})"
                )
            pieces.append((literal, name))
        if not any(name for _, name in pieces):
            raise ConfigError(
                f"template {text!r} has no placeholder: name at least one column, e.g. {{review}}"
            )
        return cls(text, tuple(pieces))

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the template reads, each once, in order of first use."""
        return tuple(dict.fromkeys(name for _, name in self.pieces if name is not None))

    def check(self, columns: Collection[str]) -> None:
        """Refuse a template that names a column not in ``columns``.

        Raises:
            ConfigError: names the missing placeholders and the columns there are.
        """
        missing = [name for name in self.columns if name not in columns]
        if missing:
            shown = ", ".join("{" + name + "}" for name in missing)
            raise ConfigError(
                f"template placeholder(s) {shown} name no column of the DataFrame; its columns "
                f"are: {', '.join(sorted(columns)) or '(none)'}"
            )

    def render(self, nulls: NullRule) -> Column:
        """The rendered prompt of each row (null where a column is null and ``nulls`` is
        ``"invalid"``)."""
        from pyspark.sql import functions as F

        parts: list[Column] = []
        for literal, name in self.pieces:
            if literal:
                parts.append(F.lit(literal))
            if name is not None:
                value = F.col(f"`{name}`").cast("string")
                parts.append(F.coalesce(value, F.lit("")) if nulls == "empty" else value)
        return F.concat(*parts)

    def null_message(self) -> Column:
        """Why a row's prompt is null: the template columns that are null in it."""
        from pyspark.sql import functions as F

        names = [F.when(F.col(f"`{n}`").isNull(), F.lit(n)) for n in self.columns]
        return F.concat(F.lit("template column(s) null: "), F.concat_ws(", ", *names))
