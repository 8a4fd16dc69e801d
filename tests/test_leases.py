"""Ownership of a shared store: leases claimed, waited for, renewed, taken over; commit retries."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spark_llm_batch._leases import STAGE, Leases
from spark_llm_batch._store import Store
from spark_llm_batch._store_commit import committing, is_transient
from spark_llm_batch.errors import StoreError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture
def store(spark: SparkSession, tmp_path: Path) -> Store:
    return Store.open(spark, str(tmp_path / "store"))


def test_a_held_lease_is_not_taken_until_it_expires_or_is_released(store: Store) -> None:
    first, second = Leases(store, ttl=60.0), Leases(store, ttl=60.0)
    assert first.claim(["k1", "k2"]) == {"k1", "k2"}
    assert second.claim(["k1", "k3"]) == {"k3"}  # k1 is first's, k3 was free
    assert second.holders(["k1", "k3", "k9"]) == {
        "k1": first.owner,
        "k3": second.owner,
        "k9": None,
    }
    assert first.claim(["k1"]) == {"k1"}  # claiming what one holds renews it
    first.release(["k1"])
    assert second.claim(["k1"]) == {"k1"}
    assert first.held == {"k2"}


def test_claims_and_renewals_read_back_only_when_some_name_was_not_written(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Leases(store, ttl=60.0), Leases(store, ttl=60.0)
    reads: list[list[str]] = []
    holders = Leases.holders

    def counted(self: Leases, names: list[str], *, live: bool = True) -> dict[str, str | None]:
        reads.append(list(names))
        return holders(self, names, live=live)

    monkeypatch.setattr(Leases, "holders", counted)
    assert first.claim(["k1", "k2"], holders={"k1": None, "k2": None}) == {"k1", "k2"}
    first.renew()
    assert reads == []  # both wrote a row per name: nothing to read back
    assert second.claim(["k1", "k3"]) == {"k3"}  # k1 is held: who won is read back
    assert reads == [["k1", "k3"], ["k1", "k3"]]
    assert first.holders(["k1", "k2", "k3"]) == {
        "k1": first.owner, "k2": first.owner, "k3": second.owner
    }  # fmt: skip


def test_a_dead_holder_is_taken_over_and_a_live_one_stops_after_losing_it(store: Store) -> None:
    dead = Leases(store, ttl=6.0)
    assert dead.claim(["batch"]) == {"batch"}
    heir = Leases(store, ttl=60.0)
    assert heir.claim(["batch"]) == set()
    time.sleep(6.5)  # no heartbeat: the lease lapses
    assert heir.claim(["batch"]) == {"batch"}
    dead.renew()  # too late: it finds the lease taken, and no longer counts it as held
    assert dead.held == set()
    assert dead.lost == {"batch"}
    with pytest.raises(StoreError, match=r"lost its lease\(s\) on \['batch'\]"):
        dead.check()  # the run stops before its next step
    assert heir.holders(["batch"]) == {"batch": heir.owner}


def test_a_late_renewal_keeps_a_lapsed_lease_that_no_run_took(store: Store) -> None:
    late, other = Leases(store, ttl=3.0), Leases(store, ttl=60.0)
    assert late.claim(["batch"]) == {"batch"}
    time.sleep(3.5)  # no renewal: a heartbeat held up behind the run's own long Spark jobs
    assert other.holders(["batch"]) == {"batch": None}  # lapsed: free to take, but none took it
    late.check()  # over ttl / 2 since the last renewal: renews now, in this thread
    assert (late.held, late.lost) == ({"batch"}, set())
    assert other.claim(["batch"]) == set()  # live again
    assert other.holders(["batch"]) == {"batch": late.owner}


def test_the_heartbeat_keeps_leases_alive_and_releases_them_at_the_end(store: Store) -> None:
    holder, other = Leases(store, ttl=6.0), Leases(store, ttl=6.0)
    with holder.heartbeat():
        holder.claim(["b"])
        time.sleep(8.0)  # past the ttl: alive only through renewals
        assert other.claim(["b"]) == set()
        holder.check()
    assert other.claim(["b"]) == {"b"}  # released when the block ended


def test_a_second_stager_waits_for_the_first(store: Store) -> None:
    first, second = Leases(store, ttl=60.0), Leases(store, ttl=60.0)
    order: list[str] = []
    with first.holding(STAGE):

        def stage_second() -> None:
            with second.holding(STAGE, poll=0.2):
                order.append("second")

        thread = threading.Thread(target=stage_second)
        thread.start()
        time.sleep(1.5)
        order.append("first done")
    thread.join(timeout=60)
    assert order == ["first done", "second"]


def test_committing_retries_races_and_reports_what_kept_failing() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("[DELTA_CONCURRENT_APPEND.WITHOUT_HINT] Transaction conflict")
        return "done"

    assert committing("appending", flaky, sleep=lambda _: None) == "done"
    assert len(calls) == 3

    def always() -> None:
        raise RuntimeError("[DELTA_CONCURRENT_APPEND] Transaction conflict detected")

    with pytest.raises(StoreError, match=r"appending to batches failed 4 times.*CONCURRENT"):
        committing("appending to batches", always, attempts=4, sleep=lambda _: None)

    def broken() -> None:
        raise RuntimeError("[PATH_NOT_FOUND] Path does not exist")

    with pytest.raises(RuntimeError, match="PATH_NOT_FOUND"):  # not a race: raised at once
        committing("reading", broken, sleep=lambda _: None)
    assert not is_transient(RuntimeError("[PATH_NOT_FOUND]"))


def test_a_run_that_died_on_this_machine_loses_its_leases_at_once(store: Store) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = Leases(store, ttl=600.0)
    dead.owner = dead.owner.split("/")[0] + f"/{gone.stdout.strip()}/feedbeef"  # its process ended
    assert dead.claim(["b"]) == {"b"}
    alive = Leases(store, ttl=600.0)  # this process: alive
    assert alive.claim(["c"]) == {"c"}
    heir = Leases(store, ttl=600.0)
    assert heir.claim(["b", "c"]) == {"b"}  # long before b's 600 s are up; c's holder lives


def test_a_new_key_is_claimed_by_one_append_and_a_release_forgets_it_and_old_lapsed_leases(
    spark: SparkSession, store: Store
) -> None:
    from spark_llm_batch._leases import FORGET_AFTER_SECONDS

    mine, other = Leases(store, ttl=60.0), Leases(store, ttl=60.0)
    before = len(store.spark.sql(f"DESCRIBE HISTORY {store.table_ref('leases')}").collect())
    mine.claim_new(["fresh1", "fresh2"])
    history = store.spark.sql(f"DESCRIBE HISTORY {store.table_ref('leases')}").collect()
    assert len(history) == before + 1  # one commit:
    assert history[0]["operation"] == "WRITE"  # a blind append, no MERGE
    assert mine.held == {"fresh1", "fresh2"}
    assert other.claim(["fresh1"]) == set()  # held like any claimed lease
    # A lease that lapsed long ago (a run that died elsewhere), and one that lapsed just now.
    spark.sql(
        f"INSERT INTO {store.table_ref('leases')} VALUES "
        f"('ancient', 'gone', current_timestamp() - make_interval(0, 0, 0, 0, 0, 0, "
        f"{FORGET_AFTER_SECONDS + 60})), ('recent', 'gone', current_timestamp())"
    )
    mine.release(["fresh1"])
    left = {row[0] for row in store.table("leases").select("name").collect()}
    assert left == {"fresh2", "recent"}  # released and ancient rows deleted; the rest kept
    assert other.claim(["fresh1"]) == {"fresh1"}
