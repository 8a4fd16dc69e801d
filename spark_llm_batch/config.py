"""Configuration: strict, frozen pydantic models, loadable from YAML.

Every option of :func:`spark_llm_batch.llm_batch` lives here once, with its description. A
``spark-submit`` job reads the same models from a YAML file with :meth:`BatchConfig.from_file`.

Example:
    >>> cfg = BatchConfig(model="gpt-4o-mini", store="/tmp/llm_store")
    >>> cfg.provider_id
    'openai'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from spark_llm_batch.errors import ConfigError

__all__ = [
    "KNOWN_PROVIDERS",
    "AnthropicOptions",
    "BatchConfig",
    "BatchLimits",
    "JobConfig",
    "OpenAIOptions",
    "PollPolicy",
    "ProviderSettings",
    "RetryPolicy",
    "load_yaml",
    "parse_model_id",
]

KNOWN_PROVIDERS = ("anthropic", "openai")

# Model-name prefixes that identify a provider when the id carries no "provider:" prefix.
_MODEL_PREFIXES = {
    "openai": ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"),
    "anthropic": ("claude-",),
}

# Environment variables read when settings are not given explicitly.
_ENV = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def parse_model_id(model: str, provider: str | None = None) -> tuple[str, str]:
    """Split ``"openai:gpt-4o-mini"`` into ``("openai", "gpt-4o-mini")``.

    Without a prefix, the provider is ``provider`` when given, else inferred from the model name.

    Raises:
        ConfigError: the provider is unknown or cannot be inferred.

    Example:
        >>> parse_model_id("claude-3-5-haiku-latest")
        ('anthropic', 'claude-3-5-haiku-latest')
    """
    name = model.strip()
    if ":" in name:
        prefix, name = name.split(":", 1)
        if provider is not None and provider != prefix:
            raise ConfigError(
                f"model {model!r} names provider {prefix!r} but provider={provider!r} was given"
            )
        provider = prefix
    if not name:
        raise ConfigError("model is empty: pass a model name such as 'gpt-4o-mini'")
    if provider is None:
        for candidate, prefixes in _MODEL_PREFIXES.items():
            if name.startswith(prefixes):
                provider = candidate
                break
    if provider is None:
        raise ConfigError(
            f"cannot tell the provider of model {model!r}: write it as 'openai:{name}' or "
            f"'anthropic:{name}', or pass provider=... (known providers: {', '.join(KNOWN_PROVIDERS)})"
        )
    if provider not in KNOWN_PROVIDERS:
        raise ConfigError(
            f"unknown provider {provider!r}; known providers: {', '.join(KNOWN_PROVIDERS)}"
        )
    return provider, name


class ProviderSettings(_Strict):
    """Credentials and endpoint of one provider. Unset fields come from the environment."""

    api_key: SecretStr | None = Field(
        default=None, description="API key; defaults to OPENAI_API_KEY / ANTHROPIC_API_KEY."
    )
    base_url: str | None = Field(
        default=None, description="API base URL; defaults to OPENAI_BASE_URL / ANTHROPIC_BASE_URL."
    )
    timeout_seconds: float = Field(default=600.0, gt=0, description="HTTP timeout of one call.")
    max_retries: int = Field(
        default=5,
        ge=0,
        description=(
            "Retries of one failed control-plane call (list, retrieve, cancel, results download; "
            "a create only after looking it up), with backoff and the provider's Retry-After. "
            "Ours is the only retry loop: the SDK clients' own retries are off."
        ),
    )

    def resolved(self, provider: str) -> ProviderSettings:
        """Fill unset fields from the provider's environment variables.

        Raises:
            ConfigError: no API key was given and the environment variable is unset.
        """
        key_var, url_var = _ENV[provider]
        api_key = self.api_key
        if api_key is None or not api_key.get_secret_value():
            env_key = os.environ.get(key_var, "")
            if not env_key:
                raise ConfigError(
                    f"no API key for {provider}: set the environment variable {key_var} "
                    f"or pass provider_settings=ProviderSettings(api_key=...)"
                )
            api_key = SecretStr(env_key)
        base_url = self.base_url or os.environ.get(url_var) or None
        return self.model_copy(update={"api_key": api_key, "base_url": base_url})


EMBEDDINGS = "/v1/embeddings"
"""OpenAI's embeddings endpoint: one text per request, a vector per answer (``llm_embed``)."""


class OpenAIOptions(_Strict):
    """Options of OpenAI's Batch API only (``openai={...}``)."""

    endpoint: Literal[
        "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings"
    ] = Field(default="/v1/chat/completions", description="The endpoint every request calls.")
    completion_window: Literal["24h"] = Field(
        default="24h", description="The batch completion window (OpenAI accepts '24h' only)."
    )


class AnthropicOptions(_Strict):
    """Options of Anthropic's Message Batches API only (``anthropic={...}``)."""

    max_tokens: int = Field(
        default=1024,
        gt=0,
        description=(
            "max_tokens of every request when params set neither max_tokens nor "
            "max_completion_tokens (Anthropic requires one)."
        ),
    )


class BatchLimits(_Strict):
    """Size limits of one provider batch. ``None`` means the provider's own limit."""

    max_requests: int | None = Field(default=None, gt=0, description="Requests per batch.")
    max_bytes: int | None = Field(default=None, gt=0, description="Encoded bytes per batch input.")


class RetryPolicy(_Strict):
    """How many attempts each retryable failure class gets (the first submission is attempt 1)."""

    rate_limited: int = Field(default=5, ge=1, description="Attempts for rate-limited requests.")
    server_error: int = Field(default=3, ge=1, description="Attempts for 5xx and timeouts.")
    expired: int = Field(default=5, ge=1, description="Attempts for requests whose batch expired.")
    missing: int = Field(
        default=3, ge=1, description="Attempts for requests absent from the results."
    )
    refused: int = Field(
        default=1, ge=1, description="Attempts for refused requests (1: no retry)."
    )
    invalid_output: int = Field(
        default=1,
        ge=1,
        description=(
            "Attempts for structured answers that do not match response_format (1: no retry; "
            "each attempt is answered, so billed)."
        ),
    )

    def attempts_for(self, failure_class: str) -> int:
        """Attempts allowed for ``failure_class``; 1 (no retry) for classes not listed."""
        return (
            int(getattr(self, failure_class, 1)) if failure_class in type(self).model_fields else 1
        )


class PollPolicy(_Strict):
    """How the driver polls provider batches: exponential backoff between bounds.

    Each batch is retrieved on its own schedule. When one ends, the others are polled again
    soon (``initial_seconds`` later), yet no sooner than ``max_seconds / 3`` after their last
    poll, and their backoff is kept: with the defaults a batch is polled about 24 times in its
    first hour and 12 an hour after that, and however often other batches end, at most about 50
    times in any hour (``bench/control_plane_bench.py`` measures it).
    """

    initial_seconds: float = Field(default=1.0, gt=0, description="First wait after a submit.")
    max_seconds: float = Field(default=300.0, gt=0, description="Longest wait between two polls.")
    multiplier: float = Field(default=1.5, ge=1.0, description="Backoff growth per idle poll.")
    progress_seconds: float = Field(
        default=60.0, gt=0, description="Interval of the progress log line."
    )
    progress_bar: bool | None = Field(
        default=None,
        description=(
            "A progress bar of requests done while the call waits: true, false, or none (shown "
            "in notebooks and on terminals, not in a job's log)."
        ),
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Give up waiting (batches stay tracked) after this long."
    )


_OPTION_FIELDS = ("openai", "anthropic")
"""BatchConfig fields holding one provider's own options (named after the provider)."""


class BatchConfig(_Strict):
    """Everything one ``llm_batch`` call needs besides the DataFrame and its prompt column."""

    model: str = Field(
        description="Model id, optionally prefixed: 'gpt-4o-mini' or 'openai:gpt-4o-mini'."
    )
    store: str = Field(
        description="Store location: a path, or 'catalog.schema' for catalog tables."
    )
    provider: Literal["openai", "anthropic"] | None = Field(
        default=None, description="Provider; inferred from the model id when absent."
    )
    system: str | None = Field(default=None, description="System prompt sent with every request.")
    template: str | None = Field(
        default=None,
        description=(
            "Prompt template over columns, e.g. 'Classify: {review}\\nProduct: {product}' "
            "(instead of a prompt column; {{ and }} are literal braces). Rendered in the JVM."
        ),
    )
    template_nulls: Literal["invalid", "empty"] = Field(
        default="invalid",
        description=(
            "A null in a template column: 'invalid' sends nothing for the row (it fails "
            "invalid_input, naming the null columns); 'empty' renders it as empty text."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Generation parameters (temperature, max_tokens, ...)."
    )
    response_format: dict[str, Any] | str | None = Field(
        default=None,
        description=(
            "Structured output: a pydantic model class, a Spark DDL string ('label STRING, "
            "score DOUBLE') or a JSON schema. The answer is parsed into the result's 'parsed' "
            "field."
        ),
    )
    id_col: str | None = Field(
        default=None, description="A unique row id column; checked for duplicates."
    )
    output: str | None = Field(
        default=None,
        description="Output Delta table name or path; default: a path under the store.",
    )
    result_col: str = Field(default="llm", description="Name of the result struct column.")
    limits: BatchLimits = Field(default_factory=BatchLimits, description="Batch size limits.")
    max_in_flight: int = Field(default=20, ge=1, description="Provider batches in flight at once.")
    transport: Literal["auto", "executors", "driver"] = Field(
        default="auto",
        description=(
            "Where provider traffic runs: 'executors' (Spark tasks upload and download, in "
            "parallel: classic clusters), 'driver' (the driver streams lines out of Spark and "
            "results back, a bounded window at a time: serverless, executors without egress), or "
            "'auto' (a Spark task probes the provider; the log says which was taken)."
        ),
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description=(
            "How long a run's claim on its batches lives without a heartbeat: another run on the "
            "same store takes over the batches of a run silent for this long (a crashed one)."
        ),
    )
    retry_failed: bool | list[str] = Field(
        default=False,
        description=(
            "Send again requests whose stored result is a failure: True for every failure class, "
            "or a list of classes (e.g. ['expired', 'rate_limited'])."
        ),
    )
    openai: OpenAIOptions = Field(
        default_factory=OpenAIOptions, description="OpenAI-only options (endpoint, window)."
    )
    anthropic: AnthropicOptions = Field(
        default_factory=AnthropicOptions, description="Anthropic-only options (max_tokens)."
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="Retry attempts per failure class."
    )
    poll: PollPolicy = Field(
        default_factory=PollPolicy, description="Polling backoff and progress."
    )
    provider_settings: ProviderSettings = Field(
        default_factory=ProviderSettings, description="Credentials and endpoint."
    )

    @field_validator("result_col")
    @classmethod
    def _result_col_named(cls, value: str) -> str:
        if not value or value.startswith("__llm"):
            raise ValueError("result_col must be non-empty and must not start with '__llm'")
        return value

    @field_validator("response_format", mode="before")
    @classmethod
    def _model_to_schema(cls, value: Any) -> Any:
        from pydantic import BaseModel

        if isinstance(value, type) and issubclass(value, BaseModel):
            from spark_llm_batch._schema import from_model

            return from_model(value)
        return value

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema sent as ``response_format`` (``None``: free text).

        Raises:
            ConfigError: ``response_format`` is still a DDL string: ``llm_batch`` turns it into a
                JSON schema with the Spark session (``spark_llm_batch._schema.resolve``).
        """
        if isinstance(self.response_format, str):
            raise ConfigError(
                f"response_format {self.response_format!r} is a DDL string: llm_batch turns it "
                "into a JSON schema (it needs the Spark session to parse it)"
            )
        return self.response_format

    @field_validator("template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        from spark_llm_batch._template import PromptTemplate

        if value is not None:
            try:
                PromptTemplate.parse(value)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("retry_failed")
    @classmethod
    def _retry_failed_known(cls, value: bool | list[str]) -> bool | list[str]:
        from spark_llm_batch._results import FAILURE_CLASSES

        if isinstance(value, list):
            unknown = sorted(set(value) - FAILURE_CLASSES)
            if unknown:
                raise ValueError(
                    f"unknown failure class(es) {unknown}; known: {', '.join(sorted(FAILURE_CLASSES))}"
                )
        return value

    @property
    def retry_classes(self) -> frozenset[str]:
        """The failure classes ``retry_failed`` sends again (empty: none)."""
        from spark_llm_batch._results import FAILURE_CLASSES

        if self.retry_failed is True:
            return FAILURE_CLASSES
        return frozenset(self.retry_failed or ())

    @model_validator(mode="after")
    def _provider_known(self) -> BatchConfig:
        try:
            provider, _ = parse_model_id(self.model, self.provider)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        object.__setattr__(self, "provider", provider)
        foreign = sorted((set(_OPTION_FIELDS) - {provider}) & self.model_fields_set)
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} options were given but model {self.model!r} is served by "
                f"{provider}: pass {provider}={{...}} options, or another model"
            )
        return self

    @property
    def provider_id(self) -> str:
        """The provider's registry name."""
        return parse_model_id(self.model, self.provider)[0]

    @property
    def model_name(self) -> str:
        """The model name without its provider prefix."""
        return parse_model_id(self.model, self.provider)[1]

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> BatchConfig:
        """Load a config from a YAML file; keyword ``overrides`` win over the file.

        Raises:
            ConfigError: the file is missing, is not YAML, or does not validate.
        """
        data = load_yaml(Path(path))
        return cls.build({**data, **overrides}, source=str(path))

    @classmethod
    def build(cls, options: dict[str, Any], *, source: str = "arguments") -> BatchConfig:
        """Validate ``options`` into a config, turning pydantic errors into one ConfigError."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(f"invalid options in {source}: {_describe(exc)}") from None


class JobConfig(_Strict):
    """A job run from YAML (``spark-llm-batch run --config FILE``, or ``spark-submit
    jobs/run_job.py --config FILE``): the input, where its prompts come from, the ``llm_batch``
    options, and whether to wait for the answers.

    The input is exactly one of ``input`` (a table name, or a path read with ``input_format``)
    and ``query`` (SQL run with ``spark.sql``); the prompts come from exactly one of
    ``prompt_col`` and ``batch.template``.

    Example YAML (``conf/example_job.yaml`` shows every option)::

        input: lake.reviews              # a table name; a path (/lake/reviews); or query: SELECT ...
        prompt_col: review_text          # or, under batch: template: "Classify: {review_text}"
        wait: true                       # false: submit, collect what has ended, exit (detached)
        batch:
          model: gpt-4o-mini
          store: /lake/llm_store
          output: lake.reviews_classified
    """

    input: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The input: a table name ('lake.reviews'), or a path ('/lake/reviews', "
            "'s3a://bucket/reviews': anything with '/' or ':') read with input_format. "
            "Exactly one of input and query."
        ),
    )
    input_format: str = Field(
        default="delta",
        min_length=1,
        description="Format of a path input (delta, parquet, json, csv, ...); paths only.",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        description="The input as a SQL query, run with spark.sql (instead of input).",
    )
    prompt_col: str | None = Field(
        default=None,
        min_length=1,
        description="The column holding each row's prompt; or none, with batch.template.",
    )
    wait: bool = Field(
        default=True,
        description=(
            "true: wait until every batch has ended, then write the output. false (detached): "
            "submit what is new, collect what has ended, record it all in the store and exit; "
            "run the same job again (e.g. on a schedule) until it reports complete."
        ),
    )
    incremental: bool = Field(
        default=True,
        description=(
            "A Delta input with the change data feed on: after the first run, read only the "
            "rows inserted since the last run and append their answers to the output "
            "(llm_batch_table); false: read the whole input every run."
        ),
    )
    batch: BatchConfig = Field(description="The llm_batch options.")

    @property
    def follows_versions(self) -> bool:
        """Whether the input is a table name or a Delta path: a table whose versions a run can
        follow (:func:`~spark_llm_batch.api.llm_batch_table`)."""
        return self.input is not None and (not self.input_is_path or self.input_format == "delta")

    @property
    def input_is_path(self) -> bool:
        """Whether ``input`` is a path (it holds ``/`` or ``:``) rather than a table name."""
        from spark_llm_batch._handle import is_table_name

        return self.input is not None and not is_table_name(self.input)

    @model_validator(mode="after")
    def _one_input_and_one_prompt_source(self) -> JobConfig:
        # These span fields, so pydantic gives them no location: each message starts with the
        # fields it is about (_describe_job prints it as is).
        if (self.input is None) == (self.query is None):
            raise ValueError(
                "input, query: give exactly one: input (a table name or a path) or query "
                "(a SQL query); " + ("both were given" if self.input else "neither was given")
            )
        if "input_format" in self.model_fields_set and not self.input_is_path:
            source = "a table name" if self.input else "a query"
            raise ValueError(
                f"input_format: only a path input is read with a format, and the input is "
                f"{source}: drop input_format, or give input a path"
            )
        if (self.prompt_col is None) == (self.batch.template is None):
            raise ValueError(
                "prompt_col, batch.template: give either prompt_col or batch.template (prompts "
                "rendered from columns), "
                + ("not both" if self.prompt_col is not None else "one of them")
            )
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> JobConfig:
        """Load a job from a YAML file.

        Raises:
            ConfigError: the file is missing, is not YAML, or does not validate; the message
                names each bad field by its path (``batch.retry.expired: ...``).

        Example:
            >>> job = JobConfig.from_file("conf/example_job.yaml")  # doctest: +SKIP
        """
        from pydantic import ValidationError

        data = load_yaml(Path(path))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid job config in {path}: {_describe_job(exc)}") from None


def _describe_job(exc: Any) -> str:
    """One item per pydantic error, ``field.path: message``; an error spanning fields (no
    location) is its message alone, which names the fields."""
    items = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        items.append(f"{where}: {message}" if where else message)
    return "; ".join(items)


def load_yaml(file: Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (``what`` names the file in errors).

    Raises:
        ConfigError: the file is missing, is not YAML, or holds something else than a mapping.
    """
    import yaml

    try:
        data = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {file}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {file} must hold a mapping")
    return data


def _describe(exc: Any) -> str:
    """One line per pydantic error: ``field.path: message``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
    )
