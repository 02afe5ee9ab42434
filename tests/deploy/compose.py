"""docker-compose.yml as Compose resolves it, without Docker: YAML merge keys plus ${VAR} interpolation.

There is no Docker engine in development or CI, so ``docker compose config`` cannot run; ``load`` applies the
two things it would to this file (PyYAML resolves ``<<`` merge keys; ``interpolate`` does the rest) with an
empty environment, i.e. what a fresh checkout without .env gets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
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


def load(env: Mapping[str, str] | None = None, path: Path = COMPOSE) -> dict[str, Any]:
    return _walk(yaml.safe_load(path.read_text()), env or {})


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
