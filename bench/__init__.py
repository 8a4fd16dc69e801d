"""Benchmarks for spark-llm-batch; ``python -m bench`` runs them and updates BENCHMARKS.md."""
