"""docker-compose.yml as Compose resolves it: YAML merge keys, ${VAR} interpolation, override files.

No Compose >= 2.24 installs here (Debian's and PyPI's docker-compose are 1.29, which rejects this file's
``env_file: required``), so ``docker compose config`` cannot run. ``load`` applies what it would: PyYAML
resolves ``<<`` merge keys, ``interpolate`` the variables (an empty environment is a fresh checkout without
.env), and ``merge`` lays override files (docker-compose.cpu.yml) on top by Compose's rules, ``!reset`` and
``!override`` included. tests/deploy/test_containers.py starts the containers this resolves to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
# Lists an override replaces rather than extends (Compose's merge rules); other lists are concatenated.
REPLACED_LISTS = frozenset({"command", "entrypoint", "test"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    pass


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unclosed ${{ in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if not match:
        raise InterpolationError(f"bad variable reference ${{{body}}}")
    name, rest = match.group(0), body[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", "-", ":?", "?", ":+", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            break
    else:
        raise InterpolationError(f"bad modifier in ${{{body}}}")
    unset = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env) if unset else value or ""
    if op in (":?", "?"):
        if unset:
            raise InterpolationError(f"{name} is required: {arg}")
        return value or ""
    return "" if unset else interpolate(arg, env)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (nestable), ``:?``, ``:+`` forms."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif text[i] == "$" and (match := _NAME.match(text, i + 1)):
            out.append(env.get(match.group(0), ""))
            i = match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def variables(text: str) -> set[str]:
    """Every variable name a string refers to, defaults included."""
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text.replace("$$", "")))


def _walk(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


class _Reset:
    """``!reset``: the override removes the key."""


RESET = _Reset()


class Override:
    """``!override VALUE``: the override replaces the key's value instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: RESET)
_Loader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_scalar(node)
    ),
)


def merge(base: Any, override: Any, key: str = "") -> Any:
    """``override`` laid on ``base`` as ``docker compose -f base -f override`` does."""
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            if value is RESET:
                out.pop(name, None)
            elif name in out:
                out[name] = merge(out[name], value, name)
            else:
                out[name] = value.value if isinstance(value, Override) else value
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED_LISTS:
        return base + [item for item in override if item not in base]
    return override


def _unwrap(node: Any) -> Any:
    """An override's own ``!reset``/``!override`` markers where nothing was under them."""
    if isinstance(node, Override):
        return _unwrap(node.value)
    if isinstance(node, dict):
        return {key: _unwrap(value) for key, value in node.items() if value is not RESET}
    if isinstance(node, list):
        return [_unwrap(item) for item in node]
    return node


def load(env: Mapping[str, str] | None = None, path: Path = COMPOSE, *overrides: Path) -> dict[str, Any]:
    """The project ``docker compose -f path -f override…`` would run, interpolated with ``env``."""
    document = yaml.load(path.read_text(), Loader=_Loader)
    for override in overrides:
        document = merge(document, yaml.load(override.read_text(), Loader=_Loader))
    return _walk(_unwrap(document), env or {})


def active_services(project: Mapping[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The services ``docker compose up`` starts: those without profiles, plus the named profiles'."""
    return {
        name: service
        for name, service in project["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def start_order(services: Mapping[str, Any]) -> list[str]:
    """Services in dependency order (``depends_on`` first), as Compose starts them."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join((*path, name))}")
        for dependency in services[name].get("depends_on", {}):
            if dependency in services:
                visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (map or list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def duration_s(value: str) -> float:
    """A Compose duration ("10m", "45s", "1h30m") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"bad duration {value!r}")
    return sum(float(n) * units[u] for n, u in parts)
