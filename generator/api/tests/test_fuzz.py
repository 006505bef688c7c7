"""The whole API fuzzed from its own OpenAPI schema (schemathesis) against a live site.

The site runs as `manage.py serve` in a subprocess (its own SQLite database, the built-in ComfyUI
emulator), and the schema is the one it serves at /api/openapi.json. Every operation gets
generated inputs, valid and invalid (schemathesis's coverage and fuzzing phases), three ways:
with a key, without one, and with a wrong one. No answer may be a 5xx, and every answer must be
one the schema documents: its status code, content type, headers and body. Without a valid key
every answer is the API's 401.

The run is bounded (MAX_EXAMPLES per operation and way, besides the coverage phase's fixed set)
and reproducible: Hypothesis is derandomized and schemathesis seeded, so the same inputs go out
on every run. At the end the number of inputs tried, per operation and answer, is written to the
terminal. A failure carries what the site logged meanwhile (its traceback, for a 500).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from generator.tests.browser import running_site
from generator.tests.factories import png_bytes

SEED = 20261204
MAX_EXAMPLES = 40  # generated per operation and way of authenticating, besides the coverage phase's
REQUEST_TIMEOUT = 60  # seconds; POST /v1/images/* wait for their job, which takes a few seconds here
WRONG_KEY = "csk_000000000000_" + "x" * 43  # well formed, unknown

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
SITE_ENV = {
    "API_RATE_LIMIT": "100000/m",
    "QUOTA_MAX_QUEUED": "100000",
    "QUOTA_MAX_RUNNING": "100000",
    "QUOTA_MAX_IMAGES_PER_DAY": "100000000",
    # The built-in emulator, not a ComfyUI this machine's environment may name.
    "COMFYUI_URL": "",
    "COMFYUI_URLS": "",
}

# GET /api/jobs/{id}/events streams until the job ends. Fuzzed while other operations queue
# jobs, an id that hits a job still queued or running would hold the request open as long as
# that job takes (behind every other fuzzed job in the queue). So with a key it is fuzzed on its
# own, last, once every job has ended (test_events_of_ended_jobs): then each stream sends the
# job's `finished` event and ends, or the answer is a 204 or an error. Without a valid key it
# answers 401 before it streams anything, so there it is fuzzed with the rest.
EVENTS = "generator_api_jobs_job_events"


@dataclass
class LiveApi:
    url: str
    key: str
    log: Path
    tried: Counter[tuple[str, str]] = field(default_factory=Counter)
    answered: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, request) -> Iterator[LiveApi]:
    tmp = tmp_path_factory.mktemp("fuzz")
    key_file = tmp / "api-key"
    seed = (
        "from django.contrib.auth.models import User; from generator.api.keys import create_key; "
        f"u = User.objects.create_user('fuzz'); open({str(key_file)!r}, 'w').write(create_key(u, 'fuzz')[1])"
    )
    started = time.monotonic()
    with running_site(tmp, extra_env=SITE_ENV, seed=seed) as url:
        live = LiveApi(url, key_file.read_text(), tmp / "server.log")
        yield live
    _report(request, live, time.monotonic() - started)


def _report(request, live: LiveApi, seconds: float) -> None:
    """Inputs tried, per way and operation, with the answers' status codes, on the terminal."""
    total = sum(live.tried.values())
    lines = [f"API fuzz: {total} inputs in {seconds:.0f} s (seed {SEED}, site log {live.log})"]
    for (way, label), count in sorted(live.tried.items()):
        statuses = ", ".join(
            f"{status}×{n}" for (w, o, status), n in sorted(live.answered.items()) if (w, o) == (way, label)
        )
        lines.append(f"  {way:<9} {label:<30} {count:>4}  ({statuses})")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": live_api.url,
            "request-timeout": REQUEST_TIMEOUT,
            "generation": {"deterministic": True, "max-examples": MAX_EXAMPLES, "database": "none"},
        }
    )
    url = f"{live_api.url}/api/openapi.json"
    try:
        return schemathesis.openapi.from_url(url, config=config)
    except Exception as failure:
        server_log = live_api.log.read_text(errors="replace")
        failure.add_note(f"The site's log ({live_api.log}):\n{server_log[-6000:]}")
        raise


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request) -> None:
    """schemathesis 4.32's from_fixture reads (and sets) `item._nodeid` to name each operation's
    subtest; pytest 9.2 keeps node ids elsewhere, so give the item the attribute it reads."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def call(case, live: LiveApi, way: str, headers: dict[str, str] | None):
    """Send `case` (`headers` in place of any Authorization it has) and check the answer against
    the schema; a failure gets what the site logged meanwhile."""
    for name in [name for name in (case.headers or {}) if name.lower() == "authorization"]:
        del case.headers[name]
    label = case.operation.label
    live.tried[way, label] += 1
    logged = live.log.stat().st_size
    try:
        response = case.call(headers=headers, timeout=REQUEST_TIMEOUT)
        live.answered[way, label, response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
    except BaseException as failure:
        with live.log.open(errors="replace") as log:
            log.seek(logged)
            server_log = log.read().strip()
        if server_log:
            failure.add_note(f"The site's log meanwhile ({live.log}):\n{server_log[-6000:]}")
        raise
    return response


# -- with a key -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known_jobs(api_schema, live_api: LiveApi) -> list[int]:
    """Jobs made by requests as a client would send them (each answer checked like the fuzzed
    ones), so that fuzzed ids (small ones come often) and lists meet real jobs: two that
    succeeded, with outputs, and one cancelled."""
    generate = api_schema["/v1/images/generations"]["POST"].Case(
        body={"prompt": "a lighthouse at dusk", "n": 2, "size": "256x256"}
    )
    response = call(generate, live_api, "setup", live_api.headers)
    assert response.status_code == 200, response.text
    edit = api_schema["/v1/images/edits"]["POST"].Case(
        body={"image": png_bytes(), "prompt": "the same lighthouse, at dawn"},
        media_type="multipart/form-data",
    )
    response = call(edit, live_api, "setup", live_api.headers)
    assert response.status_code == 200, response.text
    create = api_schema["/api/jobs"]["POST"].Case(
        body={"workflow": "txt2img", "parameters": {"prompt": "a lighthouse", "steps": 4}}
    )
    response = call(create, live_api, "setup", live_api.headers)
    assert response.status_code == 202, response.text
    cancel = api_schema["/api/jobs/{pk}"]["DELETE"].Case(path_parameters={"pk": response.json()["id"]})
    response = call(cancel, live_api, "setup", live_api.headers)
    assert response.status_code == 200, response.text
    listed = call(api_schema["/api/jobs"]["GET"].Case(), live_api, "setup", live_api.headers)
    assert listed.status_code == 200, listed.text
    return [job["id"] for job in listed.json()["data"]]


def _cancel_if_started(case, response, live: LiveApi) -> None:
    """A job a fuzzed POST /api/jobs queued is cancelled at once: dozens of them, of up to
    hundreds of emulated steps each, would otherwise queue ahead of the jobs POST /v1/images/*
    wait for."""
    if case.method.upper() == "POST" and case.path == "/api/jobs" and response.status_code == 202:
        httpx.delete(f"{live.url}/api/jobs/{response.json()['id']}", headers=live.headers, timeout=30)


@FUZZ_SETTINGS
@schema.exclude(operation_id=EVENTS).parametrize()
def test_with_a_key(case, live_api, known_jobs):
    response = call(case, live_api, "key", live_api.headers)
    _cancel_if_started(case, response, live_api)


def _end_every_job(live: LiveApi) -> None:
    """Cancel what is still queued or running, and wait until the bridge has ended it all."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=live.url, headers=live.headers, timeout=30) as client:
        while True:
            unended = [
                job["id"]
                for status in ("queued", "submitted", "running")
                for job in client.get("/api/jobs", params={"status": status, "limit": 100}).json()["data"]
            ]
            if not unended:
                return
            assert time.monotonic() < deadline, f"jobs still not ended: {unended}"
            for job_id in unended:
                client.delete(f"/api/jobs/{job_id}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def every_job_ended(live_api: LiveApi, known_jobs) -> LiveApi:
    _end_every_job(live_api)
    return live_api


@FUZZ_SETTINGS
@schema.include(operation_id=EVENTS).parametrize()
def test_events_of_ended_jobs(case, every_job_ended):
    call(case, every_job_ended, "key", every_job_ended.headers)


# -- without a valid key --------------------------------------------------------------------


def _assert_unauthenticated(case, response) -> None:
    """Nothing but the 401 without a valid key; a method the path does not have is a 405 first."""
    if case.method.upper() != case.operation.method.upper():
        assert response.status_code == 405, response.text
        return
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers.get("www-authenticate") == ["Bearer"]


@FUZZ_SETTINGS
@schema.parametrize()
def test_without_a_key(case, live_api):
    _assert_unauthenticated(case, call(case, live_api, "no key", None))


@FUZZ_SETTINGS
@schema.parametrize()
def test_with_a_wrong_key(case, live_api):
    _assert_unauthenticated(case, call(case, live_api, "wrong key", {"Authorization": f"Bearer {WRONG_KEY}"}))
