"""Settings from the environment over the config file: ``OMNIXAN_LB__ADMIN__LISTEN=0.0.0.0:9090``.

A variable named ``OMNIXAN_LB__`` and a field path, ``__`` between its parts, sets that field
(names are case-insensitive). pydantic-settings' ``EnvSettingsSource`` reads the variables against
the config's fields: a list or a mapping is given as JSON (``OMNIXAN_LB__BACKENDS='[{"host":
"10.0.0.1", "port": 80}]'``), ``null`` sets a field to null, and a field that also takes a short
form keeps a value that is not JSON as it is (``OMNIXAN_LB__STATE=redis://cache:6379/0``). What
the variables say is merged over the file: a mapping key by key, anything else (a list included)
replaced whole.

A variable with the prefix that names no field is an error, as an unknown key in the file is: a
typo (``OMNIXAN_LB__ADMIN_LISTEN``) would otherwise be ignored without a word.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

PREFIX: Final = "OMNIXAN_LB__"
DELIMITER: Final = "__"
NULL: Final = "null"


class _Source(EnvSettingsSource):
    """pydantic-settings' source, over a given environment rather than always ``os.environ``."""

    def __init__(self, model: type[BaseModel], environ: Mapping[str, str]) -> None:
        self._environ = environ
        # The source reads only the fields and the model_config of its class, which any model has.
        super().__init__(
            cast("type[BaseSettings]", model),
            case_sensitive=False,
            env_prefix=PREFIX,
            env_nested_delimiter=DELIMITER,
            env_parse_none_str=NULL,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, False, NULL)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if str(value).lstrip()[:1] in ("[", "{"):
                raise  # meant as JSON: say what is wrong with it
            return value  # a short form (state: redis://...): the model's validators read it


class EnvOverrides:
    """The settings one environment gives, and which variable gave which."""

    def __init__(self, model: type[BaseModel], environ: Mapping[str, str]) -> None:
        # The variables of ours, by their lowercased name (the source lowercases names).
        self.names = {name.lower(): name for name in variables(environ)}
        ours = {name: environ[name] for name in self.names.values()}
        fields = [name.lower() for name in model.model_fields]
        self.unknown = [
            name
            for lower, name in sorted(self.names.items())
            if not any(
                lower == f"{PREFIX.lower()}{f}" or lower.startswith(f"{PREFIX.lower()}{f}{DELIMITER}") for f in fields
            )
        ]
        self.values: dict[str, Any] = {}
        if self.names:
            self.values = _read(_Source(model, ours), ours)

    def problems(self) -> list[str]:
        """One line per variable that names no setting, as the file's unknown keys are reported."""
        return [f"{_path(name)}: unknown key (from {name})" for name in self.unknown]

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with these settings over it."""
        return merge(document, self.values)

    def origin(self, loc: tuple[int | str, ...]) -> str | None:
        """The variable(s) that set the value at ``loc`` (a validation error's), or None: the file's."""
        node: Any = self.values
        for part in loc:
            if not isinstance(node, dict):
                break  # a list or a value set whole: its variable set what is inside
            if str(part) not in node:
                return None
            node = node[str(part)]
        names = [str(part).lower() for part in loc]
        for end in range(len(names), 0, -1):
            exact = self.names.get(PREFIX.lower() + DELIMITER.join(names[:end]))
            if exact is not None:
                return exact
        below = PREFIX.lower() + DELIMITER.join(names) + DELIMITER
        return ", ".join(name for lower, name in sorted(self.names.items()) if lower.startswith(below)) or None


def variables(environ: Mapping[str, str]) -> list[str]:
    """The names of the variables that set settings (``omnixan-lb check`` lists them)."""
    return sorted(name for name in environ if name.upper().startswith(PREFIX))


def _read(source: _Source, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        return source()
    except SettingsError as exc:
        cause = exc.__cause__
        if not isinstance(cause, json.JSONDecodeError):
            raise ConfigurationError(f"(environment): {exc}") from None
        problem = f"not valid JSON: {cause.msg} at character {cause.pos + 1}"
        name = next((name for name, value in environ.items() if value == cause.doc), None)
        raise ConfigurationError(
            f"(environment): {problem}" if name is None else f"{_path(name)}: {problem} (from {name})"
        ) from None


def _path(name: str) -> str:
    """``OMNIXAN_LB__ADMIN__LISTEN`` -> ``admin.listen``, the field path a file error names."""
    return ".".join(name[len(PREFIX) :].lower().split(DELIMITER)) or "(top)"


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top: mappings merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        merged[key] = merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged
