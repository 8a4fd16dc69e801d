"""Provider registry: one module per provider, looked up by the name in ``"openai:gpt-4o-mini"``.

:data:`REGISTRY` maps names to import paths rather than classes, so importing this package does not
import any provider SDK; a provider's module is imported when it is first asked for.

Example:
    >>> from spark_llm_batch.config import BatchConfig, ProviderSettings
    >>> sorted(REGISTRY)
    ['anthropic', 'openai']
    >>> settings = ProviderSettings(api_key="sk-x1234567")
    >>> def provider_for(model):
    ...     return get_provider(BatchConfig(model=model, store="/tmp/s", provider_settings=settings))
    >>> provider_for("openai:gpt-4o-mini").name, provider_for("claude-haiku-4-5").name
    ('openai', 'anthropic')
"""

from __future__ import annotations

import importlib

from spark_llm_batch.config import BatchConfig
from spark_llm_batch.errors import ConfigError
from spark_llm_batch.providers.base import (
    BatchState,
    ChunkRef,
    Provider,
    ProviderBatch,
    ResultRecord,
)

__all__ = [
    "REGISTRY",
    "BatchState",
    "ChunkRef",
    "Provider",
    "ProviderBatch",
    "ResultRecord",
    "get_provider",
    "provider_class",
]

REGISTRY: dict[str, str] = {
    "anthropic": "spark_llm_batch.providers.anthropic:AnthropicProvider",
    "openai": "spark_llm_batch.providers.openai:OpenAIProvider",
}
"""Provider name -> ``"module:Class"`` of its :class:`Provider` implementation."""


def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name`` (imports its module on first use).

    Raises:
        ConfigError: no provider is registered under ``name``.

    Example:
        >>> provider_class("openai").default_max_requests
        50000
        >>> provider_class("anthropic").default_max_requests
        100000
    """
    target = REGISTRY.get(name)
    if target is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"provider {name!r} is not supported (yet); supported providers: {known}")
    module_name, _, class_name = target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_provider(config: BatchConfig) -> Provider:
    """Build the provider for ``config``, with credentials resolved from settings or environment.

    Raises:
        ConfigError: the provider is not supported, or no API key is set (the message names the
            environment variable to set).
    """
    name = config.provider_id
    cls = provider_class(name)
    return cls(settings=config.provider_settings.resolved(name))
