"""Fuzzing the live OpenAPI document with schemathesis, in process (ASGI, lifespan running).

Every documented operation is fuzzed on the default app (hot path on), the hot path's routes again
through FastAPI's router (hot_path=False), and POST /admin/reload on an app with an admin token.
Each gets, from the schema the running app serves at /openapi.json:

- coverage: schemathesis's deterministic cases (boundary values, missing and wrong-typed fields,
  unexpected methods, wrong content types), positive and negative;
- positive: generated requests that match the schema, path parameters pinned to the loaded model
  (its name, version, a BN layer) so that bodies reach the real handlers;
- positive-any-path: the same with free path parameters (unknown models, versions, layers, odd bytes);
- negative: generated requests that violate the schema (wrong types, missing fields, bad JSON),
  path parameters pinned;
- unauthorised (admin routes): positive requests without the bearer token;
- noise: positive requests with random unknown query parameters and X- headers, topping each route
  up to the example count when the schema leaves little to vary (a GET with no parameters).

Checks on every answer: no 5xx (`not_a_server_error`), a documented status code
(`status_code_conformance`), a documented content type (`content_type_conformance`), a body that
matches the documented schema (`response_schema_conformance`), and for every 4xx a non-empty
`detail` (`error` under /v2) with no stack trace.

BNSERVE_FUZZ_EXAMPLES is the number of generated cases each route gets at least (coverage cases come
on top), split evenly between the generation modes that apply and topped up with noise.
Short run (part of the suite): unset, 50 per route (about 25 per mode).
Long run: `BNSERVE_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/service/test_fuzz.py -s`,
which prints the totals per route (cases, failures, statuses) and overall. Both are seeded
(BNSERVE_FUZZ_SEED, default 0) and keep no example database, so a run is reproducible.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import Settings, create_app

LONG = bool(os.environ.get("BNSERVE_FUZZ_EXAMPLES"))
EXAMPLES = int(os.environ.get("BNSERVE_FUZZ_EXAMPLES") or 50)  # generated cases per route, at least
SEED = int(os.environ.get("BNSERVE_FUZZ_SEED") or 0)
REQUEST_TIMEOUT = 10.0  # seconds; a request that hangs is a failure, not a stuck suite
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Every operation of the OpenAPI document (test_every_documented_operation_is_fuzzed keeps this honest).
ROUTES = [
    "POST /predict",
    "POST /predict/batch",
    "GET /bn-stats",
    "GET /bn-stats/{layer}",
    "GET /drift",
    "GET /ui",
    "GET /model",
    "GET /healthz",
    "GET /readyz",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{model}",
    "GET /v2/models/{model}/versions/{version}",
    "GET /v2/models/{model}/ready",
    "GET /v2/models/{model}/versions/{version}/ready",
    "POST /v2/models/{model}/infer",
    "POST /v2/models/{model}/versions/{version}/infer",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "POST /v1/models/{model}:predict",
    "GET /metrics",
]
# The routes the hot path serves (service/hotpath.py): fuzzed through FastAPI's router too.
HOT_PATH_ROUTES = [r for r in ROUTES if r.startswith("POST ")]
# Routes that exist only when BNSERVE_ADMIN_TOKEN is set: fuzzed on an app that sets it.
ADMIN_TOKEN = "fuzz-admin-token"
ADMIN_ROUTES = ["POST /admin/reload", "POST /drift/reset"]
# Headers that a route's authorised cases carry (its noise: with them or without).
AUTHORISED = {route: {"Authorization": f"Bearer {ADMIN_TOKEN}"} for route in ADMIN_ROUTES}
APPS = {"hot-path": ROUTES, "router": HOT_PATH_ROUTES, "admin": ADMIN_ROUTES}

# Known service bugs found by this fuzzer: route -> reason; each becomes xfail(strict=True).
KNOWN: dict[str, str] = {}


@dataclass
class Failed:
    kind: str
    checks: str
    status: int | None
    request: str  # a curl command that reproduces it (cut at 600 characters)
    answer: str


@dataclass
class RouteResult:
    route: str
    app: str
    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[Failed] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.cases.items())
        codes = " ".join(f"{c}:{n}" for c, n in sorted(self.statuses.items()))
        return (f"{self.app:8s} {self.route:50s} {self.total:6d} cases, {len(self.failures):4d} failures "
                f"({kinds}; status {codes}; {self.seconds:.1f} s)")  # fmt: skip


RESULTS: list[RouteResult] = []


@dataclass
class Fuzzed:
    schema: Any  # schemathesis.specs.openapi.schemas.OpenApiSchema
    pinned: dict[str, str]  # path parameter -> a value the loaded model knows


def _load(tabular, name: str) -> Fuzzed:
    token = {"admin_token": ADMIN_TOKEN} if name == "admin" else {}
    app = create_app(Settings(model_path=tabular.folded, hot_path=name != "router", **token))
    # schemathesis's ASGI transport runs the app's lifespan (model loaded and warmed) before the first
    # request, so /openapi.json already carries the model's examples and path parameter values.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.seed = SEED
    info = schema["/model"]["GET"].Case().call().json()
    layer = schema["/bn-stats"]["GET"].Case().call().json()["layers"][0]["name"]
    pinned = {"model": info["name"], "version": info["model_version"], "layer": layer}
    return Fuzzed(schema, pinned)


@pytest.fixture(scope="module")
def apps(tabular) -> Iterator[dict[str, Callable[[], Fuzzed]]]:
    loaded: dict[str, Fuzzed] = {}

    def get(name: str) -> Callable[[], Fuzzed]:
        def load() -> Fuzzed:
            if name not in loaded:
                loaded[name] = _load(tabular, name)
            return loaded[name]

        return load

    yield {name: get(name) for name in APPS}
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the models' lifespans end with the module, not at interpreter exit


@pytest.fixture(scope="module", autouse=True)
def totals(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not RESULTS:
        return
    lines = [
        f"schemathesis {schemathesis.__version__} fuzz totals "
        f"(at least {EXAMPLES} generated cases per route, seed {SEED}):"
    ]
    lines += [r.line() for r in RESULTS]
    cases, failures = sum(r.total for r in RESULTS), sum(len(r.failures) for r in RESULTS)
    lines.append(f"all: {len(RESULTS)} route runs, {cases} cases, {failures} failures, "
                 f"{sum(r.seconds for r in RESULTS):.1f} s")  # fmt: skip
    _print("\n".join(lines), request, force=LONG)


def _print(text: str, request: pytest.FixtureRequest, force: bool) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if force and capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + text, flush=True)
    else:
        print("\n" + text)


def _params() -> list[Any]:
    out = []
    for app, routes in APPS.items():
        for route in routes:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[route])] if route in KNOWN else []
            out.append(pytest.param(app, route, id=f"{app}-{route}", marks=marks))
    return out


def test_every_documented_operation_is_fuzzed(apps) -> None:
    for app, expected in (("hot-path", ROUTES), ("admin", ROUTES + ADMIN_ROUTES)):
        documented = [result.ok().label for result in apps[app]().schema.get_all_operations()]
        assert sorted(documented) == sorted(expected), f"{app}: add new operations to ROUTES (or ADMIN_ROUTES)"


@pytest.mark.parametrize(("app", "route"), _params())
def test_fuzz_route(apps, request: pytest.FixtureRequest, app: str, route: str) -> None:
    fuzzed = apps[app]()
    method, path = route.split(" ", 1)
    operation = fuzzed.schema[path][method]
    pinned = {name: fuzzed.pinned[name] for name in re.findall(r"\{(\w+)\}", path)}
    result = RouteResult(route, app)
    started = time.perf_counter()

    def run(case: Any, kind: str) -> None:
        result.cases[kind] += 1
        _call_and_check(case, kind, result)

    # coverage: deterministic, both modes
    config = fuzzed.schema.config.generation_for(operation=operation, phase="coverage")
    for case in fuzzed.schema.iter_coverage_cases(operation, generation_modes=list(GenerationMode),
                                                  generation_config=config):  # fmt: skip
        run(case, "coverage")

    authorised = AUTHORISED.get(route)
    strategies: list[tuple[str, Any]] = [
        ("positive", operation.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned, headers=authorised)),
        ("negative", operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=pinned, headers=authorised)),
    ]
    if pinned:
        strategies.insert(1, ("positive-any-path", operation.as_strategy(GenerationMode.POSITIVE)))
    if authorised:
        strategies.insert(1, ("unauthorised", operation.as_strategy(GenerationMode.POSITIVE)))
    generated, share = 0, -(-EXAMPLES // len(strategies))  # the route's examples, split between the modes
    for kind, strategy in strategies:
        generated += _drive(strategy, share, lambda case, kind=kind: run(case, kind))
    if generated < EXAMPLES:  # the schema left little to vary: top up with unknown parameters and headers
        plain = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned)
        noise = st.tuples(st.one_of(plain, strategies[0][1]) if authorised else plain, _QUERY, _HEADERS)
        _drive(noise, EXAMPLES - generated, lambda drawn: run(_with_noise(*drawn), "noise"))

    result.seconds = time.perf_counter() - started
    RESULTS.append(result)
    _print(result.line(), request, force=LONG)
    assert sum(n for kind, n in result.cases.items() if kind != "coverage") >= EXAMPLES
    assert not result.failures, _report(result)


def _drive(strategy: Any, examples: int, body: Callable[[Any], None]) -> int:
    """Run `body` on up to `examples` draws of `strategy`; how many ran (fewer once the space is exhausted)."""
    count = 0

    @seed(SEED)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def fuzz(drawn: Any) -> None:
        nonlocal count
        count += 1
        body(drawn)

    try:
        fuzz()
    except Exception as e:  # Unsatisfiable: no negative request exists for, e.g., a GET without parameters
        if type(e).__name__ not in ("Unsatisfiable", "FailedHealthCheck"):
            raise
    return count


_QUERY = st.dictionaries(st.from_regex(r"\A[a-z_][a-z0-9_\[\]]{0,12}\Z"), st.text(max_size=20), max_size=3)
_HEADERS = st.dictionaries(
    st.from_regex(r"\Ax-fuzz-[a-z0-9-]{1,12}\Z"),
    st.from_regex(r"\A([!-~]([ -~]{0,38}[!-~])?)?\Z"),  # printable ASCII, no edge spaces (as HTTP allows)
    max_size=3,
)


def _with_noise(case: Any, query: dict[str, str], headers: dict[str, str]) -> Any:
    case.query = {**(case.query or {}), **query}
    case.headers = {**(case.headers or {}), **headers}
    return case


def _call_and_check(case: Any, kind: str, result: RouteResult) -> None:
    try:
        response = case.call(timeout=REQUEST_TIMEOUT)
    except Exception as e:  # the app raised out of ASGI, or timed out: no answer at all
        result.failures.append(Failed(kind, f"no answer: {type(e).__name__}: {e}"[:300], None, _curl(case), ""))
        return
    result.statuses[response.status_code] += 1
    problems: list[str] = []
    try:
        case.validate_response(response, checks=CHECKS)
    except (AssertionError, BaseExceptionGroup) as e:
        failures = getattr(e, "exceptions", None) or (e,)
        problems += [f"{getattr(f, 'title', type(f).__name__)}: {getattr(f, 'message', str(f))}" for f in failures]
    problems += _error_answer_problems(case, response)
    if problems:
        answer = response.text[:400]
        result.failures.append(Failed(kind, " | ".join(problems)[:600], response.status_code, _curl(case), answer))


def _error_answer_problems(case: Any, response: Any) -> list[str]:
    """A 4xx says what was wrong, in the documented field; no answer shows a stack trace."""
    problems = []
    if "Traceback (most recent call last)" in response.text:
        problems.append("a stack trace in the answer")
    if 400 <= response.status_code < 500 and case.method.upper() != "HEAD":
        key = "error" if case.formatted_path == "/v2" or case.formatted_path.startswith("/v2/") else "detail"
        try:
            message = response.json().get(key)
        except (ValueError, AttributeError):
            message = None
        if not isinstance(message, str) or not message.strip():
            problems.append(f"a {response.status_code} without a `{key}` message")
    return problems


def _curl(case: Any) -> str:
    try:
        text = case.as_curl_command()
    except Exception:
        text = f"{case.method} {case.formatted_path} body={case.body!r}"
    return text if len(text) <= 600 else text[:600] + "..."


def _report(result: RouteResult) -> str:
    groups: dict[tuple[str, int | None], list[Failed]] = collections.defaultdict(list)
    for f in result.failures:
        groups[(f.checks.split(":", 1)[0], f.status)].append(f)
    lines = [f"{len(result.failures)} of {result.total} cases failed on {result.app} {result.route}:"]
    for (check, status), items in groups.items():
        first = items[0]
        lines.append(f"- {len(items)} x {check} (status {status}, e.g. a {first.kind} case)\n"
                     f"    {first.checks}\n    request: {first.request}\n    answer: {first.answer}")  # fmt: skip
    return "\n".join(lines)


def test_the_fuzzer_catches_an_undocumented_answer(apps) -> None:
    """The checks bite: an answer the document does not describe is reported (guards against a fuzz
    run that passes because nothing is checked)."""
    fuzzed = apps["hot-path"]()
    case = fuzzed.schema["/model"]["GET"].Case()
    response = case.call()
    assert response.status_code == 200
    wrong = Response(
        status_code=200,
        headers=response.headers,
        content=json.dumps({"name": 1}).encode(),
        request=response.request,
        elapsed=0.0,
        verify=True,
    )  # not a ModelInfo
    with pytest.raises((AssertionError, BaseExceptionGroup)):
        case.validate_response(wrong, checks=CHECKS)
    case.validate_response(response, checks=CHECKS)
