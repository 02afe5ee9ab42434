"""Schemathesis against each service's own OpenAPI schema: no 5xx, and responses that match the schema.

Real HTTP to the running apps (real Redis; the editor on the tiny checkpoint, capped at n ≤ 2 and
steps ≤ 4 so a generated request never runs long), with the bearer token. Every documented operation gets a
bounded number of schema-valid and schema-violating examples from a fixed seed, so a CI run is repeatable
and its length is bounded; shrinking is off (the first failing example is reported as sent).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.hypothesis.builder import add_examples
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.conftest import AUTH, Service

SEED = 20261127
EXAMPLES_PER_OPERATION = 20  # per generation mode; all three services stay well under 40 s on 2 cores
# A schema-violating body may also be over ETCHR_MAX_BODY_BYTES (a string past its maxLength, written as JSON
# escapes): the 413 rejecting it is as honest as a 422, so it counts as rejected too.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def fuzz_operation(operation: Any, url: str, mode: GenerationMode) -> list[str]:
    """Failures (as text) from up to EXAMPLES_PER_OPERATION generated cases of ``operation`` in ``mode``;
    positive runs first send the schema's own examples (a real image, so the success path is checked)."""
    failures: list[str] = []

    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs={"base_url": url})
        except Exception as exc:  # a FailureGroup per case, with a curl line to replay it
            failures.append(f"{operation.label} [{mode.value}]\n{exc}")
        if response.status_code >= 500:
            failures.append(f"{operation.label} [{mode.value}] {response.status_code}: {response.text[:500]}")

    test = given(case=operation.as_strategy(generation_mode=mode))(check)
    if mode is GenerationMode.POSITIVE:
        test = add_examples(test, operation, fill_missing=True)
    test = settings(
        max_examples=EXAMPLES_PER_OPERATION,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(seed(SEED)(test))
    try:
        test()
    except Unsatisfiable:  # nothing to violate: an operation without parameters has no negative cases
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


@pytest.mark.parametrize("name", ["editor", "verifier", "reward"])
def test_schemathesis_finds_no_server_errors(services: dict[str, Service], name: str) -> None:
    url = services[name].url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG, headers=AUTH, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 4  # the three probes and at least one API operation were loaded
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.extend(fuzz_operation(operation, url, mode))
    assert not failures, "\n\n".join(failures[:10])
