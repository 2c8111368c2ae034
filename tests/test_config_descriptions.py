"""Every field of the server's config carries a description, visible in its JSON schema (for
IDEs, generated docs and the admin API's document)."""

from __future__ import annotations

from typing import Any

from load_balancing_module.config import LoadBalancingModuleConfig
from load_balancing_module.server.config import ServerConfig

# The library's config models are described on the lead's branch (src/load_balancing_module/config.py);
# until it is merged they are skipped here, with the fields ServerConfig and PoolConfig inherit from
# LoadBalancingModuleConfig. The lead removes this skip after merging.
LIBRARY_MODELS = frozenset(
    {
        "LoadBalancingModuleConfig",
        "HealthCheckConfig",
        "CircuitBreakerConfig",
        "RateLimitConfig",
        "LoadBalancingAlgorithm",
        "BackendConfig",
        "Request",
    }
)
LIBRARY_FIELDS = frozenset(LoadBalancingModuleConfig.model_fields)
EXTENDS_LIBRARY = frozenset({"ServerConfig", "PoolConfig"})  # subclasses of LoadBalancingModuleConfig


def undescribed(schema: dict[str, Any]) -> list[str]:
    """``Model.field`` for every property of every model in ``schema`` with no description."""
    models = {schema.get("title", "ServerConfig"): schema, **schema.get("$defs", {})}
    missing = []
    for name, model in models.items():
        if name in LIBRARY_MODELS:
            continue
        for field, spec in model.get("properties", {}).items():
            if name in EXTENDS_LIBRARY and field in LIBRARY_FIELDS:
                continue
            description = spec.get("description")
            if not isinstance(description, str) or not description.strip():
                missing.append(f"{name}.{field}")
    return missing


def test_every_server_config_field_has_a_description() -> None:
    assert undescribed(ServerConfig.model_json_schema()) == []


def test_the_walk_sees_nested_models_and_skips_only_the_librarys() -> None:
    schema = ServerConfig.model_json_schema()
    assert {"RetryOn", "UpstreamTLS", "RouteMatch", "PoolConfig", "ListenerTLS"} <= set(schema["$defs"])
    schema["$defs"]["UpstreamTLS"]["properties"]["ca"].pop("description")
    schema["properties"]["listen"].pop("description")
    schema["$defs"]["BackendConfig"]["properties"]["host"].pop("description", None)  # the library's: skipped
    assert undescribed(schema) == ["ServerConfig.listen", "UpstreamTLS.ca"]
