"""The Delta store: the checkpoint every run shares (tables and migrations: ``_store_tables``).

A store is a location: a path (anything with ``/`` or ``:``, tables at ``<path>/<table>``) or a
catalog schema ``catalog.schema`` (managed tables written with ``saveAsTable``). Everything goes
through SQL and the DataFrame API, so it works on classic Spark and Spark Connect alike.

Public surface (used by ``api`` and the orchestrator)::

    store = Store.open(spark, "/lake/llm_store")      # creates / migrates; ConfigError if unwritable
    store.final_hashes()        -> DataFrame[__llm_hash]                answered for good
    store.inflight_hashes()     -> DataFrame[__llm_hash]                in a batch not yet collected
    store.unsent(requests)      -> requests + __llm_attempt             neither final nor in flight
    store.append_chunks(rows)   the sink packing stages chunks through (members and their lines)
    store.record_staged(staged, provider=..., endpoint=...) -> list[BatchRecord]
    store.chunk_lines(keys)     -> DataFrame[batch_key, hash, attempt, nbytes, line]  what uploads send
    store.sweep_chunks()        drop the lines of collected batches and of crashed runs' chunks
    store.results_df()          -> DataFrame[__llm_hash, status, text, ..., attempt, final]
    store.progress()            -> Progress (batches by state, requests done / total)

Write-ahead rule: every method that commits says, in its docstring, which side effect may follow.
Each Delta commit costs 0.3-1 s, so transitions of many batches go in one append
(:meth:`append_batches`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from spark_llm_batch import _columns as C
from spark_llm_batch import _failpoints
from spark_llm_batch._handle import is_table_name
from spark_llm_batch._progress import Progress, summarize
from spark_llm_batch._store_commit import committing
from spark_llm_batch._store_tables import (
    BATCH_COLUMNS,
    CHUNK_COLUMNS,
    MIGRATION_COLUMNS,
    MIGRATIONS,
    RETIRED_MIGRATIONS,
    TABLES,
    BatchRecord,
    Phase,
    ddl,
    fresh_tables,
)
from spark_llm_batch.errors import ConfigError, StoreError
from spark_llm_batch.providers.base import ChunkRef

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["ORPHAN_AGE_SECONDS", "StagedLike", "Store"]

log = logging.getLogger("spark_llm_batch")

_TERMINAL = [p.value for p in Phase if p.is_terminal]
_CHUNK_NAMES = [name for name, _ in CHUNK_COLUMNS]

ORPHAN_AGE_SECONDS = 24 * 3600.0
"""How old staged rows no batch names must be before :meth:`Store.sweep_chunks` drops them."""


class StagedLike(Protocol):
    """What ``_pack.stage_chunks`` returns: the written chunks (their members already committed)."""

    chunks: Sequence[ChunkRef]


class Store:
    """A store location opened on a Spark session. Build it with :meth:`open`."""

    def __init__(self, spark: SparkSession, location: str) -> None:
        self.spark = spark
        self.location = location.rstrip("/")
        self.is_catalog = is_table_name(location)

    # ---- opening and migrations -------------------------------------------------------------------

    @classmethod
    def open(cls, spark: SparkSession, location: str, *, create: bool = True) -> Store:
        """Open the store at ``location``, creating and migrating its tables.

        Args:
            create: with ``False``, a location that holds no store is an error (readers such as
                the status command must not create one at a mistyped location).

        Raises:
            ConfigError: the location cannot be written (the message names it), or holds no
                store and ``create`` is false.
            StoreError: the store was migrated by a newer version of the library.

        Example:
            >>> store = Store.open(spark, "/tmp/llm_store")  # doctest: +SKIP
        """
        store = cls(spark, location)
        if not create:
            try:
                store.applied_migrations()
            except Exception:  # Spark raises several types for a missing table or path
                raise ConfigError(
                    f"no store at {location!r}: point to the store= of a run"
                ) from None
        try:
            # Two jobs creating one fresh store race on its first commits: the loser tries again
            # and finds the tables there.
            committing(f"opening the store at {location!r}", store._migrate)
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

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in ``_migrations``, in order."""
        # Ordered here, not by Spark: a handful of rows, and ORDER BY costs a sort's jobs.
        rows = self.spark.sql(
            f"SELECT name, ordinal FROM {self.table_ref('_migrations')}"
        ).collect()
        return [row[0] for row in sorted(rows, key=lambda row: (row[1], row[0]))]

    def _migrate(self) -> None:
        """Bring the store to :data:`MIGRATIONS`: one read of ``_migrations`` when it is current;
        a fresh store is created in one step (:meth:`_create_fresh`)."""
        refs = {name: self.table_ref(name) for name in TABLES}
        fresh = False
        try:
            applied = self.applied_migrations()
        except Exception:  # no store here yet, most likely (Spark raises several types)
            created = self._create_fresh(refs)
            fresh, applied = created is None, created or []
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
            if migration.sql and not fresh:  # a fresh store's tables have their final shape
                self.spark.sql(migration.sql.format(**refs))
            if migration.add_columns:  # checked even then: another opener may have made the table
                self._add_columns(refs[migration.table], migration.table, migration.add_columns)
        if todo:
            # One commit records them all: the statements are idempotent, so a crash before this
            # commit only means they run again.
            now = dt.datetime.now(dt.timezone.utc)
            rows = [(m.name, i, now) for i, m in todo]
            frame = self.spark.createDataFrame(rows, ddl(MIGRATION_COLUMNS))
            self._append("_migrations", frame.coalesce(1))

    def _create_fresh(self, refs: dict[str, str]) -> list[str] | None:
        """Create every table at once (concurrent statements), each in the shape all of
        :data:`MIGRATIONS` give it (:func:`fresh_tables`); ``None`` when this run created
        ``_migrations`` (so none is recorded yet), else what ``_migrations`` lists (another
        opener created it first, or it was there but the first read failed: read again, and
        its error is raised if it fails again; if it is not there yet, another opener is
        creating it right now, and the "already exists" is raised: a race, tried again).

        A crash halfway leaves some tables; the next open finds ``_migrations`` empty, or
        missing, and runs the migrations, which are idempotent.
        """
        plain = f"CREATE TABLE {refs['_migrations']} ({ddl(MIGRATION_COLUMNS)}) USING DELTA"
        statements = [plain, *(sql.format(**refs) for sql in fresh_tables().values())]

        def run(statement: str) -> Exception | None:
            try:
                self.spark.sql(statement)
            except Exception as exc:  # every statement finishes before any error is raised
                return exc
            return None

        with ThreadPoolExecutor(len(statements)) as pool:
            first, *others = pool.map(run, statements)
        if first is not None:
            if "ALREADY_EXISTS" not in str(first):
                raise first
            try:
                return self.applied_migrations()
            except Exception as exc:
                if "NOT_FOUND" in str(exc) or "DOES_NOT_EXIST" in str(exc):
                    # Another opener is creating it this moment: a race, tried again.
                    raise first from None
                raise
        for failed in others:
            if failed is not None:
                raise failed  # a race with another opener is retried (``committing``)
        return None

    def _add_columns(self, ref: str, name: str, columns: tuple[tuple[str, str], ...]) -> None:
        """Add the ``columns`` table ``name`` lacks. Two runs opening a fresh store race here:
        the loser finds the columns added by the other, which is what it wanted."""
        missing = [(n, t) for n, t in columns if n not in set(self.table(name).columns)]
        if not missing:
            return
        try:
            self.spark.sql(f"ALTER TABLE {ref} ADD COLUMNS ({ddl(tuple(missing))})")
        except Exception:  # FIELD_ALREADY_EXISTS when another run added them first
            present = set(self.table(name).columns)
            if any(n not in present for n, _ in columns):
                raise

    # ---- low-level table access -------------------------------------------------------------------

    def table(self, name: str) -> DataFrame:
        """Table ``name`` as a DataFrame."""
        return self.spark.sql(f"SELECT * FROM {self.table_ref(name)}")

    def _append(self, name: str, frame: DataFrame) -> None:
        """Append ``frame`` to table ``name`` in one Delta commit."""
        writer = frame.write.format("delta").mode("append")
        if self.is_catalog:
            target = self.table_ref(name).replace("`", "")
            committing(f"appending to {name}", lambda: writer.saveAsTable(target))
        else:
            committing(f"appending to {name}", lambda: writer.save(f"{self.location}/{name}"))

    def _delete(self, name: str, condition: str) -> None:
        """``DELETE FROM`` table ``name`` where ``condition`` (SQL): one commit."""
        statement = f"DELETE FROM {self.table_ref(name)} WHERE {condition}"
        committing(f"deleting from {name}", lambda: self.spark.sql(statement).collect())

    # ---- batches: the event log -------------------------------------------------------------------

    def append_batches(self, records: Iterable[BatchRecord]) -> None:
        """Commit the given transitions (any number of batches) in ONE Delta append.

        Whatever side effect a transition announces (``creating`` before ``provider.create``) may
        start only after this returns.
        """
        rows = [record.to_row() for record in records]
        if not rows:
            return
        schema = ddl(BATCH_COLUMNS)
        # One file per commit: a few rows from the driver would otherwise be spread over
        # ``spark.default.parallelism`` tasks and files, which every later read of the event
        # log opens again.
        self._append("batches", self.spark.createDataFrame(rows, schema).coalesce(1))
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

    def record_staged(
        self, staged: StagedLike, *, provider: str, endpoint: str, job: str | None = None
    ) -> list[BatchRecord]:
        """Record freshly staged chunks: their ``staged`` batch rows, in one commit.

        Write-ahead: packing committed the chunks (:meth:`append_chunks`: members and lines) before
        these batch rows make them "in flight", and the batch rows come before any upload. A crash
        in between leaves chunks of no batch: ignored (swept a day later), and their requests are
        staged again by the next run.

        Args:
            staged: ``_pack.stage_chunks`` output (chunks committed; they also keep the lines a
                retry re-sends, until the batch is collected).
            provider: the provider's registry name.
            endpoint: the provider endpoint every line targets.
            job: the job the batches are staged for (the output its run writes), for status.

        Returns:
            The committed ``staged`` records.
        """
        records = [
            BatchRecord.staged(c, provider=provider, endpoint=endpoint, job=job)
            for c in staged.chunks
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

    # ---- chunks: staged lines -----------------------------------------------------------------------

    def append_chunks(self, rows: DataFrame) -> None:
        """Commit packing's dealt rows (``batch_key``, ``hash``, ``attempt``, ``nbytes``, ``line``)
        to ``chunks`` in one append: the Spark job that builds them.

        They count as in flight only once :meth:`record_staged` commits their batch rows; until
        then they are members of no batch (ignored, and swept a day later).
        """
        from pyspark.sql import functions as F

        now = dt.datetime.now(dt.timezone.utc)
        self._append("chunks", rows.withColumn("staged_at", F.lit(now)).select(*_CHUNK_NAMES))

    def chunk_sizes(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per chunk key: (lines, bytes) as committed (narrow columns only)."""
        from pyspark.sql import functions as F

        rows = (
            self.chunk_lines(keys)
            .groupBy("batch_key")
            .agg(F.count(F.lit(1)).alias("n"), F.sum("nbytes").alias("b"))
            .collect()
        )
        return {row["batch_key"]: (int(row["n"]), int(row["b"])) for row in rows}

    def chunk_lines(self, keys: Sequence[str]) -> DataFrame:
        """The ``chunks`` rows of the given batch keys (a partition filter: only theirs are read)."""
        from pyspark.sql import functions as F

        return self.table("chunks").where(F.col("batch_key").isin(list(keys)))

    def copy_chunk(self, old_key: str, new_key: str) -> None:
        """Commit ``old_key``'s rows under ``new_key`` (before the new batch's row exists)."""
        from pyspark.sql import functions as F

        frame = self.chunk_lines([old_key]).withColumn("batch_key", F.lit(new_key))
        self._append("chunks", frame.select(*_CHUNK_NAMES))

    def members_of(self, keys: Sequence[str]) -> DataFrame:
        """Members (``hash``, ``batch_key``, ``attempt``) of the given batches."""
        return self.chunk_lines(keys).select("hash", "batch_key", "attempt")

    def sweep_chunks(
        self, done: Sequence[str] = (), *, older_than: float = ORPHAN_AGE_SECONDS
    ) -> int:
        """Delete the ``chunks`` rows no batch still needs; return how many keys were dropped.

        A batch's lines are needed until it is collected (uploads, retries read them). Dropped:
        the rows of ``done`` (keys the caller knows are collected or abandoned: dropped without
        reading them), of the other collected and abandoned batches, and rows no batch names that
        were staged more than ``older_than`` seconds ago (a crash between packing's write and the
        batch commit; younger ones may belong to a run staging right now). Only the partitions
        outside ``done`` are read, to find those, and the batches' states only when there are
        some. Each dropped key is a whole partition, so the one DELETE rewrites no file. (Lapsed
        leases are forgotten by lease releases.) Best effort: a failure only logs.
        """
        from pyspark.sql import functions as F

        try:
            others = self.table("chunks")
            if done:
                others = others.where(~F.col("batch_key").isin(list(done)))  # partitions pruned
            cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
            old = (F.min("staged_at") < F.lit(cutoff)).alias("old")
            staged = {row[0]: row[1] for row in others.groupBy("batch_key").agg(old).collect()}
            found: list[str] = []
            if staged:  # one row per partition
                states = self.current_batches_df().where(F.col("key").isin(list(staged)))
                state: dict[str, str] = dict(states.select("key", "state").collect())
                found = [key for key, aged in staged.items()
                         if state.get(key) in _TERMINAL or (key not in state and aged)]  # fmt: skip
            keys = [*done, *found]
            if keys:
                self._delete("chunks", f"batch_key IN ({_sql_strings(keys)})")
                log.info(
                    "store %s: dropped the staged lines of %d batch(es)", self.location, len(keys)
                )
            return len(keys)
        except Exception as exc:  # cleanup never fails a run
            log.warning("store %s: staged lines not swept: %s", self.location, _first_line(exc))
            return 0

    # ---- downloads: result lines the driver transport staged ------------------------------------

    def append_downloads(self, collection: str, window: pa.Table) -> None:
        """Append one window of downloaded result rows (``RESULT_ROW_COLUMNS``) under ``collection``."""
        from pyspark.sql import functions as F

        now = dt.datetime.now(dt.timezone.utc)
        frame = self.spark.createDataFrame(window)
        frame = frame.select(
            F.lit(collection).alias("collection"), *frame.columns, F.lit(now).alias("downloaded_at")
        )
        self._append("downloads", frame)

    def downloads(self, collection: str) -> DataFrame:
        """The rows downloaded under ``collection`` (``RESULT_ROW_COLUMNS``)."""
        from pyspark.sql import functions as F

        frame = self.table("downloads").where(F.col("collection") == collection)
        return frame.drop("collection", "downloaded_at")

    def drop_downloads(self, collection: str, *, older_than: float = ORPHAN_AGE_SECONDS) -> None:
        """Delete ``collection``'s downloads, and any a crashed run left over a day ago."""
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
        try:
            self._delete(
                "downloads",
                f"collection = {_sql_strings([collection])} OR downloaded_at < "
                f"TIMESTAMP '{cutoff.strftime('%Y-%m-%d %H:%M:%S')}+00:00'",
            )
        except Exception as exc:  # cleanup never fails a run
            log.warning("store %s: downloads not dropped: %s", self.location, _first_line(exc))

    # ---- request-level views ----------------------------------------------------------------------

    def inflight_hashes(
        self, exclude_keys: Sequence[str] = (), *, in_flight: Sequence[BatchRecord] | None = None
    ) -> DataFrame:
        """``__llm_hash`` of every request in a batch that is neither collected nor abandoned.

        The batches in flight are read now, on the driver (one row per batch), unless the caller
        gives them (``in_flight``: :meth:`current_batches` as it just read it); the frame reads
        only their ``chunks`` partitions, and none at all when no batch is in flight (an empty
        frame: a join with it is optimised away)."""
        from pyspark.sql import functions as F

        skip = set(exclude_keys)
        batches = self.current_batches() if in_flight is None else in_flight
        keys = sorted({r.key for r in batches} - skip)
        members = self.chunk_lines(keys) if keys else self.table("chunks").where(F.lit(False))
        return members.select(F.col("hash").alias(C.HASH)).distinct()

    def final_hashes(self, retry_classes: frozenset[str] = frozenset()) -> DataFrame:
        """``__llm_hash`` of every request answered for good (succeeded, or failed without retry),
        but for failures of ``retry_classes`` (the user asked to send those again)."""
        from pyspark.sql import functions as F

        return (
            self.table("results")
            .where(F.col("final") & ~self._asked_again(retry_classes))
            .select(F.col("hash").alias(C.HASH))
        )

    def unsent(
        self,
        requests: DataFrame,
        retry_classes: frozenset[str] = frozenset(),
        *,
        in_flight: Sequence[BatchRecord] | None = None,
    ) -> DataFrame:
        """The rows of ``requests`` (keyed by ``__llm_hash``) to send now: neither answered for
        good (:meth:`final_hashes`) nor in flight (:meth:`inflight_hashes`, of ``in_flight`` when
        given), each with ``__llm_attempt``: its last attempt plus one where a result is open,
        else 1.

        One join with ``results`` (one row per hash) gives both what is final and the last
        attempt; one with the in-flight members, when some batch is in flight.
        """
        from pyspark.sql import functions as F

        done, last = "__llm_store_done", "__llm_store_attempt"
        results = self.table("results").select(
            F.col("hash").alias(C.HASH),
            (F.col("final") & ~self._asked_again(retry_classes)).alias(done),
            F.col("attempt").alias(last),
        )
        open_ = requests.join(results, C.HASH, "left").where(~F.coalesce(F.col(done), F.lit(False)))
        open_ = open_.join(self.inflight_hashes(in_flight=in_flight), C.HASH, "left_anti")
        attempt = F.coalesce(F.col(last) + 1, F.lit(1)).alias(C.ATTEMPT)
        return open_.select(*[F.col(f"`{c}`") for c in requests.columns], attempt)

    @staticmethod
    def _asked_again(retry_classes: frozenset[str]) -> Column:
        from pyspark.sql import functions as F

        if not retry_classes:
            return F.lit(False)
        return (F.col("status") != "succeeded") & F.col("error_class").isin(sorted(retry_classes))

    def results_df(self) -> DataFrame:
        """The results table with ``hash`` named ``__llm_hash`` (one row per request hash)."""
        return self.table("results").withColumnRenamed("hash", C.HASH)

    def merge_results(self, source: DataFrame, *, insert_only: bool = False) -> int:
        """MERGE result rows (results-table columns, one per hash) into ``results``: one commit.

        A success is never overwritten, a final failure only by a later attempt (one that
        ``retry_failed`` sent again), and an older attempt never overwrites a newer one, so
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
            return committing(
                "merging into results",
                lambda: self._merge_into_results(view, update=not insert_only),
            )
        finally:
            self.spark.catalog.dropTempView(view)

    def _merge_into_results(self, view: str, *, update: bool) -> int:
        """Run the MERGE from temp view ``view``; return rows inserted plus updated."""
        matched = (
            "WHEN MATCHED AND ((NOT t.final AND s.attempt >= t.attempt) OR (t.final AND "
            "t.status <> 'succeeded' AND s.attempt > t.attempt)) THEN UPDATE SET * "
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


def _sql_strings(values: Sequence[str]) -> str:
    """``values`` as a list of SQL string literals (quotes doubled)."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
