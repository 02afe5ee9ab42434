"""docs/api.md is the one reference of the HTTP surface and the configuration: check it against the code.

- Endpoints: every route of each app (its OpenAPI document, plus the routes kept out of it: the schema
  viewers, the playground) is a ``### `METHOD /path` `` heading in that service's section or in the section
  every service shares, and every such heading is a route of the app.
- Payloads: each endpoint's section names its request and response schemas; every schema reachable from
  them (nested ones and the error body included) has a ``#### `Name` `` table whose rows are exactly its
  fields, giving each field's default (where the table has a default column) and every limit and allowed
  value the schema declares.
- Errors: the error-type table lists exactly the types the code can answer with.
- Configuration: each settings class has a table of exactly the variables its own fields read, each with
  its default; the ``etchr`` commands' own variables are listed too; no ``ETCHR_`` name in the page is
  unknown to the code.

The apps are built without starting them (no server, no Redis: ``app.openapi()`` needs no lifespan).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from etchr import settings as settings_module
from etchr.settings import EditorSettings, RewardSettings, VerifierSettings
from etchr_editor.api import OpenAIEditForm
from etchr_editor.api import create_app as create_editor_app
from etchr_reward.api import create_app as create_reward_app
from etchr_tools.cli import app as cli_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.support.routes import app_routes as walk_routes

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
# Where error types are answered: the services and the library's HTTP layer (not the clients, whose
# exceptions are the caller's side).
ERROR_SOURCES = [
    *sorted((ROOT / "services").glob("*/etchr_*/**/*.py")),
    *(ROOT / "shared" / "etchr" / name for name in ("http.py", "serving.py", "workers.py", "queue.py")),
]

SERVICE_SECTIONS = {"editor": "Editor", "verifier": "Verifier", "reward": "Reward"}
COMMON_SECTION = "Every service"
# A form the editor's OpenAI-compatible endpoint reads itself (multipart): its schema is not in the OpenAPI
# document, so the model that validates it stands in.
FORM_MODELS = {("editor", "POST", "/v1/images/edits"): OpenAIEditForm}
LIMIT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ENDPOINT_HEADING = re.compile(rf"^### `({'|'.join(HTTP_METHODS)}) (/\S*)`", re.MULTILINE)
SCHEMA_HEADING = re.compile(r"^#### `(\w+)`", re.MULTILINE)
ENV_NAME = re.compile(r"ETCHR_[A-Z0-9_]*[A-Z0-9]")


# ---------------------------------------------------------------------------------------------- the page


@cache
def doc_text() -> str:
    return API_DOC.read_text(encoding="utf-8")


def sections(text: str, level: int) -> list[tuple[str, str]]:
    """(heading text, body) for the headings of one level, in order; a body runs to the next heading of
    that level or above."""
    stop = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE)
    out = []
    for mark in re.finditer(rf"^{'#' * level} (.+)$", text, re.MULTILINE):
        end = stop.search(text, mark.end())
        out.append((mark.group(1).strip(), text[mark.end() : end.start() if end else len(text)]))
    return out


def top_section(title_start: str) -> str:
    matches = [body for title, body in sections(doc_text(), 2) if title.startswith(title_start)]
    assert len(matches) == 1, f"docs/api.md needs exactly one '## {title_start}…' section"
    return matches[0]


def endpoint_sections(body: str) -> dict[tuple[str, str], str]:
    """(METHOD, /path) → its section, for the ``### `METHOD /path` `` headings in ``body``."""
    out = {}
    for title, section in sections(body, 3):
        match = ENDPOINT_HEADING.match(f"### {title}")
        if match:
            key = (match.group(1), match.group(2))
            assert key not in out, f"{key} is documented twice in one section"
            out[key] = section
    return out


def documented_endpoints(service: str) -> dict[tuple[str, str], str]:
    """The endpoints the page gives ``service``: its own section's and those every service shares."""
    common = endpoint_sections(top_section(COMMON_SECTION))
    own = endpoint_sections(top_section(SERVICE_SECTIONS[service]))
    both = sorted(common.keys() & own.keys())
    assert not both, f"{service}: documented both for every service and for this one: {both}"
    return {**common, **own}


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def column(self, name: str) -> int | None:
        return self.header.index(name) if name in self.header else None


def tables(body: str) -> Iterator[Table]:
    """The markdown tables in ``body`` (cells stripped; a ``\\|`` inside a cell stays in it)."""
    table: Table | None = None
    for line in [*body.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if table is None:
                table = Table(header=[cell.lower() for cell in cells])
            elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                table.rows.append(cells)
        elif table is not None:
            yield table
            table = None


def first_table(body: str, where: str) -> Table:
    found = next(tables(body), None)
    assert found is not None, f"{where}: no table"
    return found


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


@cache
def schema_tables() -> dict[str, Table]:
    text = doc_text()
    out = {}
    for title, body in sections(text, 4):
        match = SCHEMA_HEADING.match(f"#### {title}")
        if match:
            assert match.group(1) not in out, f"schema {match.group(1)} has two tables"
            out[match.group(1)] = first_table(body, f"schema {match.group(1)}")
    return out


# ---------------------------------------------------------------------------------------------- the apps


@cache
def apps() -> dict[str, FastAPI]:
    return {
        "editor": create_editor_app(EditorSettings(editor_worker=False, _env_file=None)),
        "verifier": create_verifier_app(VerifierSettings(_env_file=None)),
        "reward": create_reward_app(RewardSettings(_env_file=None)),
    }


@cache
def openapi(service: str) -> dict[str, Any]:
    return apps()[service].openapi()


def app_routes(service: str) -> set[tuple[str, str]]:
    """Every (METHOD, path) the app answers, in its OpenAPI document or not (the security tests' walker)."""
    routes = walk_routes(apps()[service])
    in_schema = {(method.upper(), path) for path, ops in openapi(service)["paths"].items() for method in ops}
    assert in_schema <= routes
    return routes


def resolve(service: str, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A schema's component name (None if inline and untitled) and its body."""
    ref = schema.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        return name, openapi(service)["components"]["schemas"][name]
    return (schema.get("title") if "properties" in schema else None), schema


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[-1]
        for value in node.values():
            yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


@dataclass
class Endpoint:
    service: str
    method: str
    path: str
    request: list[str]  # schema names
    response: list[str]
    schemas: dict[str, dict[str, Any]]  # every schema reachable from request, response and errors


@cache
def endpoints(service: str) -> list[Endpoint]:
    doc = openapi(service)
    components = doc["components"]["schemas"]
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            key = (service, method.upper(), path)
            found: dict[str, dict[str, Any]] = {}
            request, response = [], []
            for content in op.get("requestBody", {}).get("content", {}).values():
                name, body = resolve(service, content["schema"])
                if name:
                    request.append(name)
                    found[name] = body
            if key in FORM_MODELS:
                model = FORM_MODELS[key]
                request.append(model.__name__)
                found[model.__name__] = model.model_json_schema()
            for status, answer in op["responses"].items():
                for content in answer.get("content", {}).values():
                    if "schema" not in content:
                        continue
                    name, body = resolve(service, content["schema"])
                    if name and status.startswith("2"):
                        response.append(name)
                    if name:
                        found[name] = body
            queue = list(found.values())
            while queue:
                for name in refs_in(queue.pop()):
                    if name not in found:
                        found[name] = components[name]
                        queue.append(components[name])
            out.append(Endpoint(service, method.upper(), path, request, response, found))
    return out


def all_schemas() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Schema name → (service, schema) for every schema some endpoint reaches."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for service in apps():
        for endpoint in endpoints(service):
            for name, schema in endpoint.schemas.items():
                out.setdefault(name, []).append((service, schema))
    return out


def request_schemas() -> set[str]:
    """Names of the schemas a caller sends (request bodies and what they nest)."""
    names = set()
    for service in apps():
        components = openapi(service)["components"]["schemas"]
        for endpoint in endpoints(service):
            queue = list(endpoint.request)
            while queue:
                name = queue.pop()
                if name in names:
                    continue
                names.add(name)
                queue.extend(refs_in(components.get(name, {})))
    return names


# ------------------------------------------------------------------------------------- field expectations


def number(value: float) -> str:
    """How the page writes a number: 64, 8000, 0.5, 30."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def default_token(value: Any) -> str:
    """How the page writes a default (the first backticked word of the default cell)."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def walk(schema: dict[str, Any], components: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A property's schema and every schema inside it that is not another object (enums by $ref included)."""
    yield schema
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            yield from walk(branch, components)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], components)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], components)
    ref = schema.get("$ref")
    if ref:
        target = components.get(ref.rsplit("/", 1)[-1], {})
        if "enum" in target:
            yield target


def limits_and_values(prop: dict[str, Any], components: dict[str, Any]) -> tuple[set[float], set[str]]:
    """Numbers the field's row must state (its limits) and values it must list (enums and constants)."""
    limits, values = set(), set()
    for part in walk(prop, components):
        limits |= {part[key] for key in LIMIT_KEYWORDS if key in part}
        values |= {str(value) for value in part.get("enum", [])}
        if "const" in part:
            values.add(str(part["const"]))
    return limits, values


def check_limits(where: str, text: str, prop: dict[str, Any], components: dict[str, Any]) -> None:
    """The row's text (all but its name) states every limit of the field and lists every allowed value."""
    limits, values = limits_and_values(prop, components)
    for limit in limits:
        assert contains_number(text, limit), f"{where}: the row does not state the limit {limit:g}"
    for value in values:
        assert f"`{value}`" in text, f"{where}: the row does not list `{value}`"


def contains_number(text: str, value: float) -> bool:
    """``value`` is one of the numbers written in ``text`` (30 and 30.0 alike; OpenAPI limits are floats)."""
    return any(float(token) == float(value) for token in re.findall(r"\d+(?:\.\d+)?", text))


# ---------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("service", list(SERVICE_SECTIONS))
def test_every_route_is_documented_and_every_documented_route_exists(service: str) -> None:
    documented = documented_endpoints(service)
    routes = app_routes(service)
    missing, stale = sorted(routes - documented.keys()), sorted(documented.keys() - routes)
    assert not missing, f"{service}: routes missing from docs/api.md: {missing}"
    assert not stale, f"{service}: docs/api.md documents routes the app lacks: {stale}"


def test_common_endpoints_are_in_every_app() -> None:
    common = endpoint_sections(top_section(COMMON_SECTION)).keys()
    for service in SERVICE_SECTIONS:
        lacking = sorted(common - app_routes(service))
        assert not lacking, f"{service} lacks routes the page says every service has: {lacking}"


@pytest.mark.parametrize("service", list(SERVICE_SECTIONS))
def test_each_endpoint_names_its_request_and_response_schemas(service: str) -> None:
    documented = documented_endpoints(service)
    for endpoint in endpoints(service):
        section = documented[(endpoint.method, endpoint.path)]
        for name in endpoint.request + endpoint.response:
            where = f"{endpoint.method} {endpoint.path}"
            assert f"`{name}`" in section, f"{where}: its section does not name `{name}`"


def test_every_schema_has_a_table_of_exactly_its_fields() -> None:
    documented = schema_tables()
    needed = all_schemas()
    missing = sorted(name for name, found in needed.items() if name not in documented and _has_fields(found))
    assert not missing, f"schemas without a `#### `Name`` table in docs/api.md: {missing}"
    stale = sorted(set(documented) - set(needed))
    assert not stale, f"docs/api.md has tables for schemas no endpoint uses: {stale}"
    sent = request_schemas()
    for name, found in needed.items():
        if name not in documented:
            continue
        table = documented[name]
        for service, schema in found:
            _check_schema_table(name, table, schema, openapi(service)["components"]["schemas"], name in sent)


def _has_fields(found: list[tuple[str, dict[str, Any]]]) -> bool:
    return any(schema.get("properties") for _, schema in found)


def _check_schema_table(
    name: str, table: Table, schema: dict[str, Any], components: dict[str, Any], sent: bool
) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    assert table.header[0] == "field", f"{name}: the table's first column must be 'field'"
    rows = {}
    for row in table.rows:
        names = ticked(row[0])
        assert len(names) == 1, f"{name}: a row's field cell must be one `name`: {row[0]!r}"
        rows[names[0]] = row
    assert set(rows) == set(properties), (
        f"{name}: table fields {sorted(rows)} != schema fields {sorted(properties)}"
    )
    default_col = table.column("default")
    if sent:
        assert default_col is not None, f"{name}: a request schema's table needs a 'default' column"
    required = set(schema.get("required", []))
    for prop_name, prop in properties.items():
        row = rows[prop_name]
        check_limits(f"{name}.{prop_name}", " | ".join(row[1:]), prop, components)
        if default_col is None:
            continue
        cell = row[default_col]
        if prop_name in required:
            assert cell.startswith("required"), f"{name}.{prop_name}: required, the default cell must say so"
        elif "default" in prop:
            words = ticked(cell)
            expected = default_token(prop["default"])
            assert words and words[0] == expected, (
                f"{name}.{prop_name}: default cell {cell!r} should start with `{expected}`"
            )


# ---------------------------------------------------------------------------------------------- errors


def _status_type_pairs(node: ast.AST) -> Iterator[tuple[int, str]]:
    """(status, type) from calls and tuples of the form (4xx/5xx, "type", ...) and from status↔type dicts."""
    if isinstance(node, ast.Call | ast.Tuple):
        args = node.args if isinstance(node, ast.Call) else node.elts
        if (
            len(args) >= 2
            and isinstance(args[0], ast.Constant)
            and isinstance(args[0].value, int)
            and 400 <= args[0].value < 600
            and isinstance(args[1], ast.Constant)
            and isinstance(args[1].value, str)
        ):
            yield args[0].value, args[1].value
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(value, ast.Constant)):
                continue
            if isinstance(key.value, int) and isinstance(value.value, str) and 400 <= key.value < 600:
                yield key.value, value.value
            if isinstance(key.value, str) and isinstance(value.value, int) and 400 <= value.value < 600:
                yield value.value, key.value


def _other_error_types(node: ast.AST) -> Iterator[str]:
    """Types whose status is decided elsewhere: those stored on a failed reward query
    (``QueryError(type=...)``, answered with their status from the service's table) and the fallback of a
    status→type lookup (``{404: "not_found", ...}.get(status, "http_error")``)."""
    if not isinstance(node, ast.Call):
        return
    if getattr(node.func, "id", None) == "QueryError":
        for keyword in node.keywords:
            if keyword.arg == "type" and isinstance(keyword.value, ast.Constant):
                yield keyword.value.value
    if (
        isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Dict)
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        yield node.args[1].value


@cache
def code_error_types() -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for path in ERROR_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for status, type_ in _status_type_pairs(node):
                found.setdefault(type_, set()).add(status)
            for type_ in _other_error_types(node):
                found.setdefault(type_, set())
    return found


def test_error_types_table_matches_the_code() -> None:
    found = [table for table in tables(top_section("Errors")) if table.header[:2] == ["status", "type"]]
    assert len(found) == 1, "## Errors needs one table whose columns start with status, type"
    table, status_col, type_col = found[0], 0, 1
    documented: dict[str, str] = {}
    for row in table.rows:
        for type_ in ticked(row[type_col]):
            documented[type_] = row[status_col]
    in_code = code_error_types()
    assert len(in_code) >= 10, f"the scan of the sources found too few error types: {sorted(in_code)}"
    missing, stale = sorted(in_code.keys() - documented.keys()), sorted(documented.keys() - in_code.keys())
    assert not missing, f"error types the code answers with, missing from the table: {missing}"
    assert not stale, f"error types in the table the code never answers with: {stale}"
    for type_, statuses in in_code.items():
        for status in statuses:
            assert str(status) in documented[type_], f"`{type_}`: status {status} missing from its row"


def test_every_endpoint_section_lists_error_types_that_exist() -> None:
    known = code_error_types().keys()
    for title in [COMMON_SECTION, *SERVICE_SECTIONS.values()]:
        for key, section in endpoint_sections(top_section(title)).items():
            for type_ in re.findall(r"\b[45]\d\d `([a-z_]+)`", section):
                assert type_ in known, f"{key}: names error type `{type_}` the code never answers with"


# ---------------------------------------------------------------------------------------- configuration


def settings_classes() -> list[type[BaseSettings]]:
    return [
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls.__module__ == settings_module.__name__
    ]


def env_names(cls: type[BaseSettings], name: str) -> list[str]:
    """The variables a field is read from, the way pydantic-settings looks them up (aliases replace the
    prefix; names are case-insensitive unless the class says otherwise)."""
    config = cls.model_config
    info = cls.model_fields[name]
    alias = info.validation_alias or info.alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias]
    else:
        names = [f"{config.get('env_prefix', '')}{name}"]
    return names if config.get("case_sensitive") else [n.upper() for n in names]


def own_fields(cls: type[BaseSettings]) -> list[str]:
    bases = [base for base in cls.__mro__[1:] if issubclass(base, BaseSettings)]
    inherited = set().union(*(base.model_fields for base in bases))
    return [name for name in cls.model_fields if name not in inherited]


def env_default_token(value: Any) -> str:
    """How the configuration tables write a default: `none`, `empty` (an empty list), `true`, 600, `INFO`."""
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) if value else "empty"
    if isinstance(value, bool | int | float):
        return number(value)
    return str(value)


def field_default(cls: type[BaseSettings], name: str) -> Any:
    info = cls.model_fields[name]
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def env_table(cls_name: str) -> Table:
    config = top_section("Configuration")
    matches = [body for title, body in sections(config, 3) if f"`{cls_name}`" in title]
    assert len(matches) == 1, f"## Configuration needs one '### … `{cls_name}` …' section"
    return first_table(matches[0], cls_name)


def _env_rows(table: Table, where: str) -> dict[str, list[str]]:
    assert table.header[:2] == ["variable", "default"], f"{where}: columns must start with variable, default"
    rows = {}
    for row in table.rows:
        names = ticked(row[0])
        assert len(names) == 1 and ENV_NAME.fullmatch(names[0]), f"{where}: one `ETCHR_…` per row: {row[0]!r}"
        rows[names[0]] = row
    return rows


def check_env_rows(where: str, rows: dict[str, list[str]], expected: dict[str, str]) -> None:
    """Exactly the expected variables, each with its default as the first backticked word of its cell."""
    assert set(rows) == set(expected), f"{where}: table {sorted(rows)} != variables {sorted(expected)}"
    for env, token in expected.items():
        words = ticked(rows[env][1])
        assert words and words[0] == token, (
            f"{env}: default cell {rows[env][1]!r} should start with `{token}`"
        )


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda cls: cls.__name__)
def test_each_settings_class_has_a_table_of_exactly_its_variables(cls: type[BaseSettings]) -> None:
    rows = _env_rows(env_table(cls.__name__), cls.__name__)
    expected = {}
    for name in own_fields(cls):
        for env in env_names(cls, name):
            expected[env] = env_default_token(field_default(cls, name))
    check_env_rows(cls.__name__, rows, expected)
    schema = cls.model_json_schema()
    for name in own_fields(cls):
        for env in env_names(cls, name):
            check_limits(env, " | ".join(rows[env][1:]), schema["properties"][name], schema.get("$defs", {}))


def cli_env_vars() -> dict[str, Any]:
    """Variables the ``etchr`` commands read through their options, with the option's default."""
    found: dict[str, Any] = {}
    queue: list[Any] = [typer.main.get_command(cli_app)]
    while queue:
        command = queue.pop()
        queue.extend(getattr(command, "commands", {}).values())  # a group's subcommands
        for param in command.params:
            envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            for env in envvars:
                found[env] = param.default
    return found


def test_cli_variables_have_a_table() -> None:
    rows = _env_rows(env_table("etchr"), "the `etchr` commands' table")
    expected = {env: env_default_token(value) for env, value in cli_env_vars().items()}
    assert expected, "the CLI scan found no variables"
    check_env_rows("the `etchr` commands", rows, expected)


def test_no_unknown_variable_is_named() -> None:
    known = set(cli_env_vars())
    for cls in settings_classes():
        for name in cls.model_fields:
            known.update(env_names(cls, name))
    unknown = sorted(set(ENV_NAME.findall(doc_text())) - known)
    assert not unknown, f"docs/api.md names variables nothing reads: {unknown}"


def _known_variables() -> set[str]:
    known = set(cli_env_vars())
    for cls in settings_classes():
        for name in cls.model_fields:
            known.update(env_names(cls, name))
    return known


def _operator_files() -> list[Path]:
    """Every file an operator reads or deploys that may name a variable."""
    files = [ROOT / "README.md", ROOT / "docker-compose.yml", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "k8s").rglob("*.yaml")) + sorted((ROOT / "docker").glob("*Dockerfile"))
    return files


@pytest.mark.parametrize("path", _operator_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_docs_and_manifests_name_only_variables_the_code_reads(path: Path) -> None:
    """README, the other docs, Compose, the Dockerfiles and the Kubernetes manifests: a stale name there
    is a setting an operator sets that nothing reads. ``ETCHR_MLLM_*`` stands for a family of names."""
    known = _known_variables()
    text = path.read_text()
    families = set(re.findall(r"(ETCHR_[A-Z0-9_]*[A-Z0-9])_\*", text))
    unknown = sorted(set(ENV_NAME.findall(text)) - known - families)
    assert not unknown, f"{path.relative_to(ROOT)} names variables nothing reads: {unknown}"
    for family in families:
        assert any(name.startswith(family + "_") for name in known), f"no variable matches {family}_*"
