# Databricks notebook source
# MAGIC %md
# MAGIC # Classify product reviews with spark-llm-batch
# MAGIC
# MAGIC One prompt per row of a table, sent through OpenAI's Batch API (half the price of real-time
# MAGIC calls), answered as typed columns. Every step is checkpointed in the **store** (Delta tables),
# MAGIC so re-running this notebook, after a failure or on a grown table, resumes without paying twice.
# MAGIC
# MAGIC **On Databricks:** attach a cluster (or serverless), put the OpenAI key in a secret scope
# MAGIC (`databricks secrets put-secret llm openai_api_key`), set the names in the configuration
# MAGIC cell, and run all. The input table is created with a few sample reviews when it does not exist.
# MAGIC
# MAGIC **Locally:** `OPENAI_API_KEY=sk-... python notebooks/classify_reviews.py` (the key comes from
# MAGIC the environment when there is no `dbutils`); against the bundled emulator, start
# MAGIC `python -m spark_llm_batch.emulator` and set `OPENAI_BASE_URL` to the URL it prints. Tables go
# MAGIC to `./spark-warehouse`, their catalog to `./metastore_db`.

# COMMAND ----------

# MAGIC %pip install spark-llm-batch

# COMMAND ----------

from typing import Literal

from pydantic import BaseModel

import spark_llm_batch  # attaches DataFrame.llm_batch
from spark_llm_batch import ProviderSettings

ON_DATABRICKS = "dbutils" in globals()  # Databricks predefines spark, dbutils and display

try:
    spark  # noqa: B018  (predefined on Databricks)
except NameError:
    # Anywhere else: a local Spark session with Delta Lake, whose catalog is a Hive metastore in
    # the working directory (./metastore_db), so that the tables outlive the session.
    spark = spark_llm_batch.local_session(conf={"spark.sql.catalogImplementation": "hive"})

# COMMAND ----------

# MAGIC %md
# MAGIC ## Configuration
# MAGIC Tables live in the session's current catalog (your Unity Catalog catalog on Databricks,
# MAGIC `spark_catalog` locally). The store is a catalog schema: the library keeps its Delta tables
# MAGIC (`batches`, `chunks`, `results`, ...) there. A path works as well, e.g. a Unity Catalog Volume:
# MAGIC `STORE = f"/Volumes/{CATALOG}/{SCHEMA}/llm/store"`.

# COMMAND ----------

CATALOG = spark.catalog.currentCatalog()
SCHEMA = "llm_demo"
INPUT_TABLE = f"{CATALOG}.{SCHEMA}.reviews"
OUTPUT_TABLE = f"{CATALOG}.{SCHEMA}.reviews_classified"
STORE = f"{CATALOG}.{SCHEMA}_store"  # a table store: one schema shared by every run

MODEL = "gpt-4o-mini"
SECRET_SCOPE, SECRET_KEY = "llm", "openai_api_key"

spark.sql(f"CREATE SCHEMA IF NOT EXISTS {CATALOG}.{SCHEMA}")
spark.sql(f"CREATE SCHEMA IF NOT EXISTS {STORE}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The API key
# MAGIC From the secret scope on Databricks, never from the notebook's text. Without `dbutils`
# MAGIC (running locally) the library reads the environment variable `OPENAI_API_KEY` (and
# MAGIC `OPENAI_BASE_URL`, if set).

# COMMAND ----------

if ON_DATABRICKS:
    api_key = dbutils.secrets.get(scope=SECRET_SCOPE, key=SECRET_KEY)  # noqa: F821
else:
    api_key = None  # ProviderSettings reads OPENAI_API_KEY (and OPENAI_BASE_URL)

provider_settings = ProviderSettings(api_key=api_key)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The input
# MAGIC Any table with a review column will do. When the configured one does not exist, a small
# MAGIC sample is written there (two reviews appear twice: identical prompts are sent and paid once).

# COMMAND ----------

if not spark.catalog.tableExists(INPUT_TABLE):
    sample = [
        (1, "kettle", 5, "Boils in two minutes and looks great on the counter."),
        (2, "kettle", 2, "The lid broke after a week."),
        (3, "headphones", 4, "Great sound, but the ear cushions get warm."),
        (4, "headphones", 1, "Stopped charging after a month. Support never answered."),
        (5, "backpack", 5, "Fits my laptop and a change of clothes. Love it."),
        (6, "backpack", 3, "Sturdy, though the zips are stiff."),
        (7, "lamp", 4, "Warm light, easy to dim."),
        (8, "lamp", 2, "Flickers at low brightness."),
        (9, "kettle", 2, "The lid broke after a week."),
        (10, "lamp", 4, "Warm light, easy to dim."),
        (11, "mug", 3, "Keeps coffee hot, but the handle is small."),
        (12, "mug", 5, "Exactly as pictured."),
    ]
    schema = "review_id BIGINT, product STRING, stars INT, review_text STRING"
    spark.createDataFrame(sample, schema).write.format("delta").saveAsTable(INPUT_TABLE)

reviews = spark.read.table(INPUT_TABLE)
print(f"{reviews.count()} reviews in {INPUT_TABLE}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run
# MAGIC The prompt is a template over columns, rendered in the JVM; the answer comes back typed in
# MAGIC `llm.parsed`. The call waits for the batches (a progress bar shows requests done) and
# MAGIC writes the output table. Run this cell again: it answers from the store and sends nothing.

# COMMAND ----------

class Verdict(BaseModel):
    label: Literal["positive", "negative", "mixed"]
    reason: str


out = reviews.llm_batch(
    template="Product: {product} ({stars} stars)\nReview: {review_text}",
    system="Classify the review: positive, negative or mixed, and why in a few words.",
    response_format=Verdict,  # or a DDL string: "label STRING, reason STRING"
    model=MODEL,
    store=STORE,
    output=OUTPUT_TABLE,
    id_col="review_id",
    params={"temperature": 0, "max_tokens": 100},
    provider_settings=provider_settings,
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The result
# MAGIC One row per input row: the input columns and the `llm` struct (`status`, `text`, `parsed`,
# MAGIC `error_class`, `error_message`, tokens, ...).

# COMMAND ----------


def show(df):
    """``display`` on Databricks, ``show`` anywhere else."""
    if ON_DATABRICKS:
        display(df)  # noqa: F821
    else:
        df.show(truncate=60)


show(out.groupBy("llm.status").count())
show(
    out.select(
        "review_id", "product", "stars", "llm.parsed.label", "llm.parsed.reason", "llm.status"
    ).orderBy("review_id")
)

# COMMAND ----------

# MAGIC %md
# MAGIC Rows that were not answered, if any, say why (`error_class`: `invalid_input` for a null
# MAGIC review, `refused`, `expired`, ...). `retry_failed=True` in the call above sends them again.

# COMMAND ----------

show(
    out.where("llm.status != 'succeeded'").select(
        "review_id", "llm.error_class", "llm.error_message"
    )
)
answered = out.where("llm.status = 'succeeded'").count()
print(f"{answered} of {out.count()} reviews answered; output table: {OUTPUT_TABLE}")
