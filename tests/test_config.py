"""BatchConfig: provider inference, strictness, YAML loading, credentials from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_llm_batch.config import BatchConfig, ProviderSettings, RetryPolicy, parse_model_id
from spark_llm_batch.errors import ConfigError


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai:my-finetune", ("openai", "my-finetune")),
        ("claude-3-5-haiku-latest", ("anthropic", "claude-3-5-haiku-latest")),
        ("anthropic:claude-x", ("anthropic", "claude-x")),
    ],
)
def test_parse_model_id(model: str, expected: tuple[str, str]) -> None:
    assert parse_model_id(model) == expected


def test_unknown_model_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'openai:llama-3'.*known providers: anthropic, openai"):
        parse_model_id("llama-3")


def test_unknown_provider() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'mistral'"):
        parse_model_id("mistral:large")


def test_conflicting_provider() -> None:
    with pytest.raises(ConfigError, match="names provider 'openai'"):
        parse_model_id("openai:gpt-4o", provider="anthropic")


def test_config_is_strict_and_frozen() -> None:
    with pytest.raises(ConfigError, match="modle"):
        BatchConfig.build({"model": "gpt-4o-mini", "store": "/tmp/s", "modle": "x"})
    cfg = BatchConfig(model="gpt-4o-mini", store="/tmp/s")
    with pytest.raises(ValueError, match="frozen"):
        cfg.store = "/elsewhere"  # type: ignore[misc]
    assert cfg.provider == "openai"
    assert cfg.model_name == "gpt-4o-mini"


def test_bad_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot tell the provider"):
        BatchConfig.build({"model": "llama-3", "store": "/tmp/s"})


def test_reserved_result_col() -> None:
    with pytest.raises(ConfigError, match="result_col"):
        BatchConfig.build({"model": "gpt-4o-mini", "store": "/tmp/s", "result_col": "__llm_x"})


def test_from_file(tmp_path: Path) -> None:
    conf = tmp_path / "job.yaml"
    conf.write_text(
        "model: openai:gpt-4o-mini\nstore: /lake/store\nparams:\n  temperature: 0\n"
        "limits:\n  max_requests: 1000\n"
    )
    cfg = BatchConfig.from_file(conf, result_col="answer")
    assert cfg.params == {"temperature": 0}
    assert cfg.limits.max_requests == 1000
    assert cfg.result_col == "answer"


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        BatchConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        BatchConfig.from_file(bad)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ProviderSettings().resolved("openai")


def test_key_from_environment_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value-123")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1")
    settings = ProviderSettings().resolved("anthropic")
    assert settings.base_url == "http://127.0.0.1:1"
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "sk-ant-secret-value-123"
    assert "sk-ant-secret" not in repr(settings)


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.attempts_for("rate_limited") == 5
    assert policy.attempts_for("invalid_request") == 1


def test_transport_and_retry_failed_are_checked() -> None:
    base = {"model": "gpt-4o-mini", "store": "/tmp/s"}
    assert BatchConfig.build(base).transport == "auto"
    assert BatchConfig.build({**base, "transport": "driver"}).transport == "driver"
    with pytest.raises(ConfigError, match="transport"):
        BatchConfig.build({**base, "transport": "carrier-pigeon"})
    assert BatchConfig.build(base).retry_classes == frozenset()
    picked = BatchConfig.build({**base, "retry_failed": ["expired", "refused"]})
    assert picked.retry_classes == {"expired", "refused"}
    assert "invalid_request" in BatchConfig.build({**base, "retry_failed": True}).retry_classes
    with pytest.raises(ConfigError, match=r"retry_failed.*unknown failure class.*'expird'"):
        BatchConfig.build({**base, "retry_failed": ["expird"]})


def test_a_job_takes_its_prompts_from_a_column_or_a_template(tmp_path: Path) -> None:
    from spark_llm_batch.config import JobConfig

    example = JobConfig.from_file(Path(__file__).resolve().parents[1] / "conf/example_job.yaml")
    assert (example.prompt_col, example.batch.template) == ("review_text", None)
    conf = tmp_path / "job.yaml"
    batch = "batch:\n  model: gpt-4o-mini\n  store: /lake/store\n"
    conf.write_text("input: lake.reviews\n" + batch + "  template: 'Classify: {review_text}'\n")
    job = JobConfig.from_file(conf)
    assert (job.prompt_col, job.batch.template) == (None, "Classify: {review_text}")
    conf.write_text(
        "input: lake.reviews\nprompt_col: review_text\n" + batch + "  template: '{a}'\n"
    )
    with pytest.raises(ConfigError, match="not both"):
        JobConfig.from_file(conf)
    conf.write_text("input: lake.reviews\n" + batch)
    with pytest.raises(ConfigError, match="one of them"):
        JobConfig.from_file(conf)
    conf.write_text("input: lake.reviews\n" + batch + "  template: 'Classify: {review_text!r}'\n")
    with pytest.raises(ConfigError, match="format spec or conversion"):
        JobConfig.from_file(conf)


def test_a_job_reads_exactly_one_of_input_and_query(tmp_path: Path) -> None:
    from spark_llm_batch.config import JobConfig

    conf = tmp_path / "job.yaml"
    batch = "prompt_col: p\nbatch:\n  model: gpt-4o-mini\n  store: /lake/store\n"
    conf.write_text("query: SELECT p FROM lake.t\n" + batch)
    job = JobConfig.from_file(conf)
    assert (job.input, job.query, job.wait, job.input_is_path) == (
        None,
        "SELECT p FROM lake.t",
        True,
        False,
    )
    conf.write_text("input: s3a://lake/t\ninput_format: json\nwait: false\n" + batch)
    job = JobConfig.from_file(conf)
    assert (job.input_is_path, job.input_format, job.wait) == (True, "json", False)
    assert not JobConfig.from_file(_write(conf, "input: lake.t\n" + batch)).input_is_path
    with pytest.raises(ConfigError, match=r"input, query: .*both were given"):
        JobConfig.from_file(_write(conf, "input: lake.t\nquery: SELECT 1\n" + batch))
    with pytest.raises(ConfigError, match=r"input, query: .*neither was given"):
        JobConfig.from_file(_write(conf, batch))
    with pytest.raises(ConfigError, match=r"input_format: only a path input"):
        JobConfig.from_file(_write(conf, "query: SELECT 1\ninput_format: csv\n" + batch))
    with pytest.raises(ConfigError, match=r"^invalid job config in .*: wait: Input should be"):
        JobConfig.from_file(_write(conf, "input: lake.t\nwait: sometimes\n" + batch))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
