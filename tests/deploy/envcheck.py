"""ETCHR_ variables in manifests, checked against the settings classes that read them.

The settings classes ignore unknown variables (``extra="ignore"``), so a misspelt or misplaced ETCHR_ name in
a manifest does nothing at all. These helpers name every variable each class reads and load a class from a
given environment exactly as the service does at start-up, so a bad value fails here and not in a pod.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pydantic_settings import BaseSettings

from etchr import settings as etchr_settings

PREFIX = "ETCHR_"
# What each `etchr serve X` / `etchr worker X` process loads.
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "editor": etchr_settings.EditorSettings,
    "verifier": etchr_settings.VerifierSettings,
    "reward": etchr_settings.RewardSettings,
}


def settings_classes() -> list[type[BaseSettings]]:
    return [
        value
        for value in vars(etchr_settings).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings
    ]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The variables ``cls`` reads: prefix + field name, upper-cased (no field uses an alias)."""
    prefix = cls.model_config.get("env_prefix", "")
    for name, info in cls.model_fields.items():
        assert info.alias is None and info.validation_alias is None, f"{cls.__name__}.{name} has an alias"
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def all_env_names() -> set[str]:
    names: set[str] = set()
    for cls in settings_classes():
        names |= env_names(cls)
    return names


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load(cls: type[BaseSettings], env: Mapping[str, str]) -> BaseSettings:
    """``cls`` built from ``env`` (its ETCHR_ entries) alone, as the service would at start-up."""
    with _environ({k: v for k, v in env.items() if k.startswith(PREFIX)}):
        return cls(_env_file=None)  # type: ignore[call-arg]


def service_of(args: list[str]) -> str:
    """``serve editor --no-worker …`` / ``worker editor`` -> ``editor``."""
    assert len(args) >= 2 and args[0] in {"serve", "worker"}, f"not an etchr service command: {args}"
    assert args[1] in SERVICE_SETTINGS, f"unknown service {args[1]!r}"
    return args[1]
