"""``spark-submit`` entry point: run the job a YAML file describes (``spark-llm-batch run``).

Usage::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
      --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\
      --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \\
      jobs/run_job.py --config conf/example_job.yaml [--no-wait]

    python jobs/run_job.py --config conf/example_job.yaml   # builds a local Delta session

The same as ``spark-llm-batch run --config ...`` and ``python -m spark_llm_batch run --config ...``
(see ``spark_llm_batch._job`` for what runs). Exit codes: 0 every row answered, or a detached run
(``wait: false``, ``--no-wait``) still in flight; 1 some rows failed; 2 bad configuration.
"""

from __future__ import annotations

import sys

from spark_llm_batch.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
