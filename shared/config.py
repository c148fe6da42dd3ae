"""Strict configuration base: YAML file + environment overrides, validated once at start-up.

Precedence (highest first): values passed to :meth:`StrictConfig.load` (tests), environment
variables (``<PREFIX>FIELD`` and ``<PREFIX>SECTION__FIELD``), the YAML file, the defaults.
An unknown or invalid field stops start-up with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_data", default=None)


#: Config fields whose input is never echoed in an error (it may be a real secret, or carry one).
SECRET_FIELD = re.compile(r"(password|secret|token|database_url)", re.IGNORECASE)


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the file and field."""


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {p}: cannot read it ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


class StrictConfig(BaseSettings):
    """Base for every service config. Subclasses set ``env_prefix`` in ``model_config``."""

    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter="__", validate_default=True)
    section: ClassVar[str] = "config"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Any:
        """Build the config from ``path`` (YAML, optional), the environment and ``overrides``.

        Raises:
            ConfigError: the file cannot be read, or a field is unknown or invalid.
        """
        data = read_yaml(path) if path else {}
        token = _yaml_data.set(data)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            where = f"config file {path}" if path else "configuration"
            prefix = cls.model_config.get("env_prefix", "")
            lines = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "<root>"
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    lines.append(f"  {field}: unknown field (check the spelling; see docs/configuration.md)")
                    continue
                # A secret that failed validation must not end up in a log: say that it was given, not what.
                shown = "value hidden" if SECRET_FIELD.search(field) else f"got {err.get('input')!r}"
                lines.append(f"  {field}: {msg} ({shown})")
            raise ConfigError(f"{where} (env prefix {prefix}) is invalid:\n" + "\n".join(lines)) from None
        finally:
            _yaml_data.reset(token)
