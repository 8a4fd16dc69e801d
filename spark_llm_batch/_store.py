"""The Delta store: the checkpoint every run shares (tables and migrations: ``_store_tables``).

A store is a location: a path (anything with ``/`` or ``:``, tables at ``<path>/<table>``) or a
catalog schema ``catalog.schema`` (managed tables written with ``saveAsTable``). Everything goes
through SQL and the DataFrame API, so it works on classic Spark and Spark Connect alike.

Public surface (used by ``api`` and the orchestrator)::

    store = Store.open(spark, "/lake/llm_store")      # creates / migrates; ConfigError if unwritable
    store.final_hashes()        -> DataFrame[__llm_hash]                answered for good
    store.inflight_hashes()     -> DataFrame[__llm_hash]                in a batch not yet collected
    store.attempts()            -> DataFrame[__llm_hash, __llm_attempt] last attempt of non-final ones
    store.append_members(members)   the sink packing commits members through
    store.record_staged(staged, provider=..., endpoint=...) -> list[BatchRecord]
    store.results_df()          -> DataFrame[__llm_hash, status, text, ..., attempt, final]
    store.progress()            -> Progress (batches by state, requests done / total)
    store.staging_uri           where chunk files are written

Write-ahead rule: every method that commits says, in its docstring, which side effect may follow.
Each Delta commit costs 0.3-1 s, so transitions of many batches go in one append
(:meth:`append_batches`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from spark_llm_batch import _columns as C
from spark_llm_batch import _failpoints
from spark_llm_batch._progress import Progress, summarize
from spark_llm_batch._store_tables import (
    BATCH_COLUMNS,
    MIGRATIONS,
    RETIRED_MIGRATIONS,
    TABLES,
    BatchRecord,
    Phase,
)
from spark_llm_batch.errors import ConfigError, StoreError
from spark_llm_batch.providers.base import ChunkRef

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["StagedLike", "Store"]

log = logging.getLogger("spark_llm_batch")

_TERMINAL = [p.value for p in Phase if p.is_terminal]


class StagedLike(Protocol):
    """What ``_pack.stage_chunks`` returns: the written chunks (their members already committed)."""

    chunks: Sequence[ChunkRef]


class Store:
    """A store location opened on a Spark session. Build it with :meth:`open`."""

    def __init__(self, spark: SparkSession, location: str) -> None:
        self.spark = spark
        self.location = location.rstrip("/")
        self.is_catalog = "/" not in location and ":" not in location

    # ---- opening and migrations -------------------------------------------------------------------

    @classmethod
    def open(cls, spark: SparkSession, location: str) -> Store:
        """Open the store at ``location``, creating and migrating its tables.

        Raises:
            ConfigError: the location cannot be written (the message names it).
            StoreError: the store was migrated by a newer version of the library.

        Example:
            >>> store = Store.open(spark, "/tmp/llm_store")  # doctest: +SKIP
        """
        store = cls(spark, location)
        try:
            store._migrate()
        except StoreError:
            raise
        except (
            Exception
        ) as exc:  # Spark raises many types for permissions, bad URIs, missing schemas
            raise ConfigError(
                f"cannot create or open the store at {location!r}: {_first_line(exc)}; pass store= a "
                f"writable path or an existing 'catalog.schema'"
            ) from None
        return store

    def table_ref(self, name: str) -> str:
        """The SQL identifier of table ``name``."""
        if self.is_catalog:
            return ".".join(f"`{part}`" for part in [*self.location.split("."), name])
        return f"delta.`{self.location}/{name}`"

    @property
    def staging_uri(self) -> str:
        """Where chunk files are staged: ``<store>/staging``, or the catalog schema's location."""
        if not self.is_catalog:
            return f"{self.location}/staging"
        rows = self.spark.sql(f"DESCRIBE SCHEMA EXTENDED {self.location}").collect()
        for row in rows:
            if str(row[0]).lower() == "location" and row[1]:
                return f"{str(row[1]).rstrip('/')}/_llm_staging"
        raise ConfigError(
            f"catalog schema {self.location!r} has no location to stage chunk files in"
        )

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in ``_migrations``, in order."""
        rows = self.spark.sql(
            f"SELECT name FROM {self.table_ref('_migrations')} ORDER BY ordinal"
        ).collect()
        return [row[0] for row in rows]

    def _migrate(self) -> None:
        refs = {name: self.table_ref(name) for name in TABLES}
        self.spark.sql(
            f"CREATE TABLE IF NOT EXISTS {refs['_migrations']} "
            "(`name` STRING, `ordinal` INT, `applied_at` TIMESTAMP) USING DELTA"
        )
        applied = self.applied_migrations()
        known = [m.name for m in MIGRATIONS]
        unknown = [n for n in applied if n not in known and n not in RETIRED_MIGRATIONS]
        if unknown:
            raise StoreError(
                f"_migrations.name lists {unknown} unknown to this version of spark-llm-batch: the "
                f"store at {self.location!r} was written by a newer version; upgrade the library"
            )
        todo = [(i, m) for i, m in enumerate(MIGRATIONS) if m.name not in applied]
        for _, migration in todo:
            log.info("store %s: applying migration %s", self.location, migration.name)
            self.spark.sql(migration.sql.format(**refs))
        if todo:
            # One commit records them all: the statements are idempotent, so a crash before this
            # commit only means they run again.
            now = dt.datetime.now(dt.timezone.utc)
            rows = [(m.name, i, now) for i, m in todo]
            frame = self.spark.createDataFrame(
                rows, "name STRING, ordinal INT, applied_at TIMESTAMP"
            )
            self._append("_migrations", frame)

    # ---- low-level table access -------------------------------------------------------------------

    def table(self, name: str) -> DataFrame:
        """Table ``name`` as a DataFrame."""
        return self.spark.sql(f"SELECT * FROM {self.table_ref(name)}")

    def _append(self, name: str, frame: DataFrame) -> None:
        """Append ``frame`` to table ``name`` in one Delta commit."""
        writer = frame.write.format("delta").mode("append")
        if self.is_catalog:
            writer.saveAsTable(self.table_ref(name).replace("`", ""))
        else:
            writer.save(f"{self.location}/{name}")

    # ---- batches: the event log -------------------------------------------------------------------

    def append_batches(self, records: Iterable[BatchRecord]) -> None:
        """Commit the given transitions (any number of batches) in ONE Delta append.

        Whatever side effect a transition announces (``creating`` before ``provider.create``) may
        start only after this returns.
        """
        rows = [record.to_row() for record in records]
        if not rows:
            return
        schema = ", ".join(f"`{name}` {kind}" for name, kind in BATCH_COLUMNS)
        self._append("batches", self.spark.createDataFrame(rows, schema))
        for record in records if isinstance(records, list) else []:
            log.debug("batch %s committed %s (seq %d)", record.key, record.state.value, record.seq)

    def current_batches_df(self) -> DataFrame:
        """Each batch's current row (highest ``seq``), with ``_dup`` = rows sharing that ``seq``."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        by_key = Window.partitionBy("key")
        latest = (
            self.table("batches")
            .withColumn("_max_seq", F.max("seq").over(by_key))
            .where(F.col("seq") == F.col("_max_seq"))
        )
        return latest.withColumn("_dup", F.count(F.lit(1)).over(by_key)).drop("_max_seq")

    def current_batches(
        self,
        *,
        provider: str | None = None,
        model: str | None = None,
        endpoint: str | None = None,
        include_terminal: bool = False,
    ) -> list[BatchRecord]:
        """The current record of every batch in scope (metadata: one row per batch, to the driver).

        Raises:
            StoreError: two rows share a batch's highest ``seq`` (a concurrent writer), an unknown
                ``state`` or a newer ``format_version``: the store cannot be trusted as it is.
        """
        from pyspark.sql import functions as F

        frame = self.current_batches_df()
        for column, value in (("provider", provider), ("model", model), ("endpoint", endpoint)):
            if value is not None:
                frame = frame.where(F.col(column) == value)
        if not include_terminal:
            frame = frame.where(~F.col("state").isin(_TERMINAL))
        frame = frame.withColumn("updated_at", F.unix_micros("updated_at") / 1e6)
        records = []
        for row in frame.collect():
            values = row.asDict()
            if values.pop("_dup") != 1:
                raise StoreError(
                    f"batches.seq {values['seq']} appears more than once for batch {values['key']!r}: "
                    "two runs wrote the same store at once; stop all but one and re-run"
                )
            records.append(BatchRecord.from_row(values))
        return sorted(records, key=lambda r: (r.attempt, r.key))

    def live_chunk_names(self) -> set[str]:
        """The chunk folder names of every batch not yet collected (any provider, model)."""
        return {r.uri.rstrip("/").rsplit("/", 1)[-1] for r in self.current_batches() if r.uri}

    def record_staged(
        self, staged: StagedLike, *, provider: str, endpoint: str
    ) -> list[BatchRecord]:
        """Record freshly staged chunks: their ``staged`` batch rows, in one commit.

        Write-ahead: packing committed the members (:meth:`append_members`) before these batch rows
        make them "in flight", and the batch rows come before any upload. A crash in between leaves
        members of no batch: ignored, and their requests are staged again by the next run.

        Args:
            staged: ``_pack.stage_chunks`` output (chunks written, members committed; the chunk
                files also keep the lines a retry re-sends, until the batch is collected).
            provider: the provider's registry name.
            endpoint: the provider endpoint every line targets.

        Returns:
            The committed ``staged`` records.
        """
        records = [
            BatchRecord.staged(c, provider=provider, endpoint=endpoint) for c in staged.chunks
        ]
        if not records:
            return []
        self.append_batches(records)
        for record in records:
            log.info(
                "batch %s: staged (%d requests, attempt %d)",
                record.key,
                record.requests,
                record.attempt,
            )
        _failpoints.hit("after_stage")
        return records

    def append_members(self, members: DataFrame) -> None:
        """Commit ``members`` (``__llm_hash``, ``batch_key``, ``attempt``) in one append.

        Packing passes this as its sink: the append runs the job that writes the chunk files, so
        the committed members are exactly the written lines. They count as in flight only once
        :meth:`record_staged` commits their batch rows.
        """
        from pyspark.sql import functions as F

        self._append(
            "members",
            members.select(
                F.col(C.HASH).alias("hash"),
                F.col("batch_key"),
                F.col("attempt").cast("int").alias("attempt"),
            ),
        )

    def copy_members(self, old_key: str, new_key: str) -> None:
        """Commit ``old_key``'s members under ``new_key`` (before the new batch's row exists)."""
        from pyspark.sql import functions as F

        frame = self.table("members").where(F.col("batch_key") == old_key)
        self._append(
            "members",
            frame.withColumn("batch_key", F.lit(new_key)).select("hash", "batch_key", "attempt"),
        )

    # ---- request-level views ----------------------------------------------------------------------

    def members_of(self, keys: Sequence[str]) -> DataFrame:
        """Members (``hash``, ``batch_key``, ``attempt``) of the given batches."""
        from pyspark.sql import functions as F

        return self.table("members").where(F.col("batch_key").isin(list(keys)))

    def inflight_hashes(self, exclude_keys: Sequence[str] = ()) -> DataFrame:
        """``__llm_hash`` of every request in a batch that is neither collected nor abandoned."""
        from pyspark.sql import functions as F

        active = self.current_batches_df().where(~F.col("state").isin(_TERMINAL))
        if exclude_keys:
            active = active.where(~F.col("key").isin(list(exclude_keys)))
        keys = active.select(F.col("key").alias("batch_key"))
        members = self.table("members").join(keys, "batch_key", "left_semi")
        return members.select(F.col("hash").alias(C.HASH)).distinct()

    def final_hashes(self) -> DataFrame:
        """``__llm_hash`` of every request answered for good (succeeded or failed without retry)."""
        from pyspark.sql import functions as F

        return self.table("results").where(F.col("final")).select(F.col("hash").alias(C.HASH))

    def attempts(self) -> DataFrame:
        """``__llm_hash``, ``__llm_attempt``: the last attempt of every request with a non-final result."""
        from pyspark.sql import functions as F

        frame = self.table("results").where(~F.col("final"))
        return frame.select(F.col("hash").alias(C.HASH), F.col("attempt").alias(C.ATTEMPT))

    def results_df(self) -> DataFrame:
        """The results table with ``hash`` named ``__llm_hash`` (one row per request hash)."""
        return self.table("results").withColumnRenamed("hash", C.HASH)

    def merge_results(self, source: DataFrame, *, insert_only: bool = False) -> int:
        """MERGE result rows (results-table columns, one per hash) into ``results``: one commit.

        A final row is never overwritten, and an older attempt never overwrites a newer one, so
        merging the same collection twice (a crash during collection) changes nothing.

        Args:
            source: the rows.
            insert_only: insert the rows whose hash is not in ``results`` and leave the others
                alone (``WHEN NOT MATCHED`` only). For rows expected to be new (first attempts):
                Delta runs it as one pass over the source, which it then neither copies nor reads
                twice, and it is still a MERGE: a hash present after all is not duplicated.

        Returns:
            How many rows ``results`` now holds as the source gave them: inserted plus updated.
            Fewer than the source's rows when some hash was there already and kept its row.
        """
        view = f"llm_batch_results_{uuid.uuid4().hex}"
        source.createOrReplaceTempView(view)
        try:
            return self._merge_into_results(view, update=not insert_only)
        finally:
            self.spark.catalog.dropTempView(view)

    def _merge_into_results(self, view: str, *, update: bool) -> int:
        """Run the MERGE from temp view ``view``; return rows inserted plus updated."""
        matched = (
            "WHEN MATCHED AND NOT t.final AND s.attempt >= t.attempt THEN UPDATE SET * "
            if update
            else ""
        )
        metrics = self.spark.sql(
            f"MERGE INTO {self.table_ref('results')} t USING {view} s ON t.hash = s.hash "
            f"{matched}WHEN NOT MATCHED THEN INSERT *"
        ).collect()
        if not metrics:  # no metrics reported: claim nothing, so callers read the table
            return -1
        return int(metrics[0]["num_updated_rows"]) + int(metrics[0]["num_inserted_rows"])

    # ---- progress ---------------------------------------------------------------------------------

    def progress(self, *, provider: str | None = None, model: str | None = None) -> Progress:
        """Batches by state and requests done / total, the same counts the orchestrator logs.

        Example:
            >>> print(store.progress())  # doctest: +SKIP
            batches: collected 3, submitted 1; requests done 30/40 (succeeded 29, failed 1)
        """
        return summarize(
            self.current_batches(provider=provider, model=model, include_terminal=True)
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
