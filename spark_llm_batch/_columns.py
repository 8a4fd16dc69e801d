"""Reserved column names used inside the pipeline and in the output's result struct.

Input DataFrames may not use names starting with ``__llm``; ``llm_batch`` checks it and raises.
"""

from __future__ import annotations

RESERVED_PREFIX = "__llm"

PROMPT = "__llm_prompt"
"""A row's prompt rendered from ``template`` (not in the output)."""
HASH = "__llm_hash"
"""The request hash: 32 lowercase hex characters, also the provider ``custom_id``."""
LINE = "__llm_line"
"""The chunk-file line (JSON without its newline); null when the row failed to encode."""
NBYTES = "__llm_bytes"
"""Encoded size of the line, newline included."""
ERR_CLASS = "__llm_error_class"
"""Per-row encode failure class (``invalid_input``, ``too_large``), null when the row encoded."""
ERR_MSG = "__llm_error_message"
"""Per-row encode failure message."""
CHUNK = "__llm_chunk"
"""Chunk index assigned by packing."""
ATTEMPT = "__llm_attempt"
"""Attempt number a pending request is staged with (1 for its first submission)."""
