# Databricks notebook source
# MAGIC %md
# MAGIC # Classify a table with spark-llm-batch
# MAGIC Runs one prompt per row through OpenAI's Batch API at batch prices. Every step is checkpointed in
# MAGIC the store, so re-running this notebook after a failure resumes without paying twice.

# COMMAND ----------

# MAGIC %pip install spark-llm-batch

# COMMAND ----------

import spark_llm_batch  # attaches DataFrame.llm_batch

# The key comes from a secret scope, never from the notebook's text.
import os
os.environ["OPENAI_API_KEY"] = dbutils.secrets.get("llm", "openai_api_key")  # noqa: F821

# COMMAND ----------

reviews = spark.read.table("lake.reviews")  # noqa: F821
prompts = reviews.selectExpr(
    "review_id",
    "concat('Classify this review as positive, negative or mixed: ', review_text) AS prompt",
)

# COMMAND ----------

out = prompts.llm_batch(
    "prompt",
    model="gpt-4o-mini",
    store="/Volumes/lake/llm/store",
    output="lake.reviews_classified",
    id_col="review_id",
    params={"temperature": 0, "max_tokens": 4},
)
display(out.groupBy("llm.status").count())  # noqa: F821

# COMMAND ----------

display(out.where("llm.status != 'succeeded'").select("review_id", "llm.error_class", "llm.error_message"))  # noqa: F821
