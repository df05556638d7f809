"""Schemathesis against the service's own OpenAPI document, in-process, on the demo map: no 5xx, and every answer
is one the document describes (status code, content type, headers, body schema), for valid and invalid requests.

Each operation gets at most 25 generated requests besides schemathesis' coverage cases, derandomised so CI runs
the same requests every time; the whole file takes about 10 s on two cores.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")
from hypothesis import HealthCheck, settings  # hypothesis comes with schemathesis
from schemathesis.checks import allow_header_conformance, positive_data_acceptance
from schemathesis.python import asgi

from server.app import create_app
from server.maps import demo_spec
from server.settings import ServiceSettings

# Creating the app is cheap: the demo map is built only when the app's lifespan starts (the fixture below).
# Schemathesis gets exactly the document the app serves at /openapi.json.
APP = create_app(ServiceSettings(), maps=[demo_spec()])
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP


@pytest.fixture(scope="module", autouse=True)
def ready_service():
    """Starts the app's lifespan (schemathesis keeps it for every request) and waits until the map is loaded."""
    with asgi.get_client(APP) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            __import__("time").sleep(0.05)
        else:
            raise AssertionError(f"service never became ready: {client.get('/readyz').text}")
    yield
    asgi.shutdown_lifespans()


def is_undecodable_image(response) -> bool:
    """422 bad_image: what the service rightly answers to bytes that are no JPEG/PNG. The document cannot say
    "decodable image" (a body is a binary string), so schemathesis counts such bodies as valid data."""
    if response.status_code != 422:
        return False
    try:
        return response.json()["error"]["code"] == "bad_image"
    except (ValueError, KeyError, TypeError):
        return False


def shares_its_path(case) -> bool:
    """Whether another route serves the same path with other methods. Starlette answers a wrong method with the
    Allow header of the first route whose path matches, not of all of them, so Allow is incomplete there."""
    return len(set(schema.raw_schema["paths"][case.operation.path]) & METHODS) > 1


METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@schema.parametrize()
@settings(max_examples=25, deadline=2000, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    response = case.call()
    # Every other check runs on every response; these two are skipped only where they cannot hold (see above).
    excluded = [positive_data_acceptance] if is_undecodable_image(response) else []
    if shares_its_path(case):
        excluded.append(allow_header_conformance)
    case.validate_response(response, excluded_checks=excluded)
