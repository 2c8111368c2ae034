"""Every config field carries a description, visible in its JSON schema (for IDEs, generated docs
and the admin API's document): the server's models and the library's they include."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from load_balancing_module.config import LoadBalancingModuleConfig, Request
from load_balancing_module.server.config import ServerConfig


def undescribed(schema: dict[str, Any]) -> list[str]:
    """``Model.field`` for every property of every model in ``schema`` with no description."""
    models = {schema.get("title", "ServerConfig"): schema, **schema.get("$defs", {})}
    missing = []
    for name, model in models.items():
        for field, spec in model.get("properties", {}).items():
            description = spec.get("description")
            if not isinstance(description, str) or not description.strip():
                missing.append(f"{name}.{field}")
    return missing


@pytest.mark.parametrize("model", [ServerConfig, LoadBalancingModuleConfig, Request])
def test_every_config_field_has_a_description(model: type[BaseModel]) -> None:
    assert undescribed(model.model_json_schema()) == []


def test_the_walk_sees_nested_models() -> None:
    schema = ServerConfig.model_json_schema()
    assert {"RetryOn", "UpstreamTLS", "RouteMatch", "PoolConfig", "ListenerTLS", "BackendConfig"} <= set(
        schema["$defs"]
    )
    schema["$defs"]["UpstreamTLS"]["properties"]["ca"].pop("description")
    schema["properties"]["listen"].pop("description")
    schema["$defs"]["BackendConfig"]["properties"]["host"].pop("description")
    assert undescribed(schema) == ["ServerConfig.listen", "BackendConfig.host", "UpstreamTLS.ca"]
