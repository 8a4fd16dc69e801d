"""LLM calls from SQL: the batch table function ``llm_batch(TABLE(...), ...)`` and the scalar
``llm_query(model, prompt)``, after one :func:`register_sql` call.

The table function runs the DataFrame API's :func:`~spark_llm_batch.api.llm_batch` (batch
prices, the store, the same output and failure classes) in the Python process that registered
it: the pipeline needs a SparkSession, which Python code run from SQL (UDTFs, data sources,
executors) does not have. So :func:`register_sql` wraps that session object's ``sql`` method:
each ``llm_batch(TABLE(<table> | <query>), name => literal, ...)`` in a statement is found
(``spark_llm_batch._sql_parse``), run to its output table, put in the statement as a temporary
view, and the statement then runs as it was written. Over a table name or ``delta.`<path>```, the
call is :func:`~spark_llm_batch.api.llm_batch_table`: a daily statement over a growing Delta
table with the change data feed reads only the rows inserted since its last run. SQL that does
not pass through this session's ``sql`` (a SQL warehouse, another session, a ``%sql`` cell) does
not see it.

The scalar is an Arrow UDF calling the provider's real-time API (full price) on executors, for
a handful of rows: more than ``max_realtime_rows`` in one Spark task raise.

Example:
    >>> import spark_llm_batch
    >>> spark_llm_batch.register_sql(spark)  # doctest: +SKIP
    >>> spark.sql('''
    ...     SELECT id, llm.text FROM llm_batch(TABLE(lake.reviews), prompt => 'review',
    ...         model => 'gpt-4o-mini', store => '/lake/llm_store', id_col => 'id')
    ... ''')  # doctest: +SKIP
    >>> spark.sql("SELECT llm_query('gpt-4o-mini', question) FROM faq LIMIT 5")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from spark_llm_batch._sql_parse import FUNCTION, Call, find_calls
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import Provider

__all__ = ["ARGUMENTS", "SCALAR", "register_sql"]

log = logging.getLogger(__name__)

SCALAR = "llm_query"
"""The scalar function's SQL name."""

_MARK = "__spark_llm_batch_sql__"  # set on our wrapper of ``spark.sql``: wrap only once
_VIEW_PREFIX = "__llm_batch_"
_THREADS = 8  # real-time calls in flight at once in one task

# SQL argument -> how its literal becomes an llm_batch option. Credentials are not among them:
# they come from the driver's environment, never from SQL text.
_AS_GIVEN = ("model", "store", "template", "template_nulls", "system", "id_col", "output",
         "result_col", "provider", "transport", "max_in_flight", "lease_seconds")  # fmt: skip
_JSON = ("params", "retry", "limits", "poll", "openai", "anthropic")
_CALL_ONLY = ("prompt", "incremental")  # arguments of the call, not llm_batch options
ARGUMENTS = tuple(sorted({"response_format", "retry_failed", *_CALL_ONLY, *_AS_GIVEN, *_JSON}))
"""The named arguments of the table function (``prompt`` is the prompt column, ``incremental``
is :func:`~spark_llm_batch.api.llm_batch_table`'s)."""
_DELTA_PATH = re.compile(r"delta\.`((?:[^`]|``)+)`", re.IGNORECASE)


def register_sql(spark: SparkSession, *, max_realtime_rows: int = 100) -> None:
    """Make ``llm_batch(TABLE(...), ...)`` and ``llm_query(...)`` callable from ``spark.sql``.

    Wraps ``spark.sql`` of this session object (classic or Spark Connect; the original is kept
    and called), and registers the scalar ``llm_query`` as a temporary function. Calling it again
    wraps nothing twice; it registers ``llm_query`` again, with the environment's credentials and
    the cap it is given then.

    Table function: ``llm_batch(TABLE(<table name> | <query>), prompt => '<column>', model =>
    '...', store => '...', ...)``, named arguments as SQL literals: any ``llm_batch`` option
    (:data:`ARGUMENTS`), dicts as JSON text (``params => '{"temperature": 0}'``),
    ``response_format`` as DDL or JSON schema text. Each call runs the whole batch (and waits for
    it) when the statement is submitted; its output table stands in for the call.

    Scalar: ``llm_query(model, prompt [, options])``, ``options`` JSON text with ``system`` and
    ``params``: one real-time request per row, the answer's text. Credentials are read from the
    driver's environment now (``OPENAI_API_KEY``/``OPENAI_BASE_URL``,
    ``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL``) and travel with the function, obscured.

    Args:
        spark: the session whose ``sql`` gets the table function.
        max_realtime_rows: the most rows ``llm_query`` answers in one Spark task; more raise,
            telling to use the table function.

    Raises:
        ConfigError: ``max_realtime_rows`` is below 1.

    Example:
        >>> register_sql(spark, max_realtime_rows=20)  # doctest: +SKIP
        >>> spark.sql("SELECT * FROM llm_batch(TABLE(SELECT * FROM faq WHERE lang = 'en'), "
        ...           "prompt => 'question', model => 'claude-haiku-4-5', store => '/lake/s')")  # doctest: +SKIP
    """
    if max_realtime_rows < 1:
        raise ConfigError(f"max_realtime_rows must be at least 1, got {max_realtime_rows}")
    _register_scalar(spark, max_realtime_rows)
    if getattr(spark.sql, _MARK, False):
        return
    original = spark.sql

    @functools.wraps(original)
    def sql(sqlQuery: str, args: Any = None, **kwargs: Any) -> DataFrame:
        return original(_rewrite(spark, original, sqlQuery), args, **kwargs)

    setattr(sql, _MARK, True)
    spark.sql = sql  # type: ignore[method-assign]


# ---- the table function ---------------------------------------------------------------------------


def _rewrite(spark: SparkSession, original: Callable[..., DataFrame], statement: str) -> str:
    """``statement`` with each call run and replaced by a view of its output table.

    Every call's arguments are checked before the first one runs, so a bad one sends nothing.
    """
    calls = find_calls(statement)
    if not calls:
        return statement
    planned = [(call, *_options(call)) for call in calls]
    views = [_run(spark, original, *plan) for plan in planned]
    for call, view in reversed(list(zip(calls, views, strict=True))):
        statement = f"{statement[: call.start]}`{view}`{statement[call.end :]}"
    return statement


def _run(
    spark: SparkSession,
    original: Callable[..., DataFrame],
    call: Call,
    prompt_col: str | None,
    options: dict[str, Any],
    incremental: bool,
) -> str:
    """Run one call, over a table through ``llm_batch_table``, else through ``llm_batch``; the
    temporary view over its output."""
    from spark_llm_batch._handle import BatchRun
    from spark_llm_batch.api import llm_batch, llm_batch_table

    log.info("%s in SQL: running over %s", FUNCTION, call.source)
    table = _table_input(call) if call.is_table else None
    if table is not None:
        out = llm_batch_table(spark, table, prompt_col, incremental=incremental, **options)
        assert not isinstance(out, BatchRun)  # it waited
    else:
        # A query may hold calls of its own; other sources (parquet.`<path>`) are read whole.
        df = spark.table(call.source) if call.is_table else original(
            _rewrite(spark, original, call.source)
        )  # fmt: skip
        out = llm_batch(df, prompt_col, **options)
    view = f"{_VIEW_PREFIX}{uuid.uuid4().hex[:16]}"
    out.createOrReplaceTempView(view)
    return view


def _table_input(call: Call) -> str | None:
    """What ``llm_batch_table`` reads for ``TABLE(<name>)``: the name, or the path of
    ``delta.`<path>```; ``None`` for other formats' paths (``parquet.`<path>```)."""
    from spark_llm_batch._handle import is_table_name

    path = _DELTA_PATH.fullmatch(call.source.strip())
    if path is not None:
        return path.group(1).replace("``", "`")
    return call.source if is_table_name(call.source) else None


def _options(call: Call) -> tuple[str | None, dict[str, Any], bool]:
    """The prompt column, ``llm_batch`` options and ``incremental`` of a call's arguments,
    validated.

    Raises:
        ConfigError: an unknown argument, malformed JSON, options that do not validate (the
            message names the argument), or ``incremental`` on a query.
    """
    from spark_llm_batch.config import BatchConfig

    args: Mapping[str, Any] = call.args
    unknown = sorted(set(args) - set(ARGUMENTS))
    if unknown:
        raise ConfigError(
            f"{FUNCTION}: unknown argument(s) {', '.join(unknown)}; known: {', '.join(ARGUMENTS)}"
        )
    options: dict[str, Any] = {}
    for name, value in args.items():
        if value is None or name in _CALL_ONLY:
            continue
        if name in _JSON:
            value = _json(name, value, dict)
        elif name == "response_format" and isinstance(value, str) and value.lstrip()[:1] == "{":
            value = _json(name, value, dict)  # a JSON schema; else a DDL string, as it is
        elif name == "retry_failed" and isinstance(value, str):
            value = _json(name, value, list) if value.lstrip()[:1] == "[" else _names(value)
        options[name] = value
    prompt = args.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"{FUNCTION}: prompt must be a column name in quotes, got {prompt!r}")
    if prompt is None and "template" not in options:
        raise ConfigError(
            f"{FUNCTION}: give prompt => '<column>' (the prompt column) or template => '...'"
        )
    incremental = args.get("incremental")
    if incremental is not None and not isinstance(incremental, bool):
        raise ConfigError(f"{FUNCTION}: incremental must be true or false, got {incremental!r}")
    if incremental is not None and not call.is_table:
        raise ConfigError(
            f"{FUNCTION}: incremental applies to TABLE(<table name>), whose versions a run can "
            f"follow; TABLE(<query>) is read whole every run"
        )
    BatchConfig.build(options, source=f"the SQL call {FUNCTION}(...)")
    return prompt, options, incremental is not False


def _json(name: str, value: Any, kind: type) -> Any:
    what = "a JSON object" if kind is dict else "a JSON array"
    if not isinstance(value, str):
        raise ConfigError(f"{FUNCTION}: argument {name!r} must be {what} in quotes, got {value!r}")
    try:
        decoded = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{FUNCTION}: argument {name!r} is not valid JSON: {exc}") from None
    if not isinstance(decoded, kind):
        raise ConfigError(f"{FUNCTION}: argument {name!r} must be {what}, got {value!r}")
    return decoded


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


# ---- the scalar ------------------------------------------------------------------------------------


def _register_scalar(spark: SparkSession, cap: int) -> None:
    from pyspark.sql.functions import arrow_udf

    providers, missing = _realtime_providers()
    function = arrow_udf(_realtime_function(providers, missing, cap), "string")  # type: ignore[call-overload]
    spark.udf.register(SCALAR, function.asNondeterministic())


def _realtime_providers() -> tuple[dict[str, Provider], dict[str, str]]:
    """A provider for each provider whose key the driver's environment holds; why the others
    have none."""
    from spark_llm_batch.config import KNOWN_PROVIDERS, ProviderSettings
    from spark_llm_batch.providers import provider_class

    providers: dict[str, Provider] = {}
    missing: dict[str, str] = {}
    for name in KNOWN_PROVIDERS:
        try:
            settings = ProviderSettings().resolved(name)
        except ConfigError as exc:
            missing[name] = (
                f"{SCALAR}: register_sql(spark) found no credentials for {name} ({exc.message}): "
                "set them in the driver's environment, then call register_sql(spark) again"
            )
            continue
        providers[name] = provider_class(name)(settings)
    return providers, missing


def _realtime_function(
    providers: dict[str, Provider], missing: dict[str, str], cap: int
) -> Callable[..., Iterator[Any]]:
    """The scalar's body: an iterator of Arrow batches of (model, prompt [, options]) in, one
    answer text per row out. Runs on executors: it holds providers (keys obscured), no session."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    def llm_query(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        answer = _Answers(providers, missing)
        seen = 0
        with ThreadPoolExecutor(_THREADS) as pool:
            for columns in batches:
                if len(columns) not in (2, 3):
                    raise ConfigError(
                        f"{SCALAR} takes (model, prompt) or (model, prompt, options), "
                        f"got {len(columns)} argument(s)"
                    )
                seen += len(columns[0])
                if seen > cap:
                    raise ConfigError(_too_many(cap))
                rows = zip(*(column.to_pylist() for column in columns), strict=True)
                yield pa.array(list(pool.map(answer, rows)), type=pa.string())

    # Spark reads the UDF's kind from its annotations, which must be objects, not strings.
    llm_query.__annotations__ = {
        "batches": Iterator[tuple[pa.Array, ...]],
        "return": Iterator[pa.Array],
    }
    return llm_query


def _too_many(cap: int) -> str:
    return (
        f"{SCALAR} got more than {cap} rows in one Spark task: it makes one real-time request "
        "per row, at full price. For a table, use the batch table function (half the price, "
        f"checkpointed): SELECT * FROM {FUNCTION}(TABLE(<table>), prompt => '<column>', "
        "model => '...', store => '...'); or filter the rows first, or raise the cap with "
        "register_sql(spark, max_realtime_rows=...) (it counts rows per Spark task)"
    )


class _Answers:
    """One row's answer: its model's provider and config (built once per model and options)."""

    def __init__(self, providers: dict[str, Provider], missing: dict[str, str]) -> None:
        self.providers = providers
        self.missing = missing
        self.configs: dict[tuple[str, str | None], BatchConfig] = {}

    def __call__(self, row: tuple[Any, ...]) -> str | None:
        model, prompt, *rest = row
        if model is None or prompt is None:
            return None
        config = self._config(model, rest[0] if rest else None)
        provider = self.providers.get(config.provider_id)
        if provider is None:
            raise ConfigError(self.missing[config.provider_id])
        return provider.complete(config, prompt)

    def _config(self, model: str, options: str | None) -> BatchConfig:
        from spark_llm_batch.config import BatchConfig

        key = (model, options)
        if key not in self.configs:
            try:
                given = json.loads(options) if options else {}
            except ValueError:
                given = None
            if not isinstance(given, dict) or set(given) - {"system", "params"}:
                raise ConfigError(
                    f"{SCALAR}: options must be a JSON object with system and params only, "
                    f"got {options!r}"
                )
            # A real-time call uses no store; BatchConfig asks for one, so it gets a placeholder.
            fields = {"model": model, "store": "-", **given}
            self.configs[key] = BatchConfig.build(fields, source=f"{SCALAR}(...)")
        return self.configs[key]
