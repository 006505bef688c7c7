"""Who may do what, over every route of the API as its schema lists them: no key, a revoked
key, another user's key, the owner's, staff's."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from generator.api.keys import create_key, revoke_key
from generator.api.main import api as ninja_api
from generator.models import Prompt
from generator.tests.factories import PromptFactory, UserFactory

from .conftest import key_client

pytestmark = pytest.mark.django_db

# Requests that would run a job are sent invalid, so nothing waits for a GPU: what is checked
# here is who gets past the door.
BODIES = {
    ("post", "/api/jobs"): {"workflow": "txt2img", "parameters": {"steps": 0}},
    ("post", "/v1/images/generations"): {"prompt": "x", "parameters": {"steps": 0}},
}


def routes() -> list[tuple[str, str]]:
    schema = ninja_api.get_openapi_schema()
    return [(method, path) for path, item in schema["paths"].items() for method in item]


def call(client: Client, method: str, path: str, job_id: int):
    url = path.replace("{pk}", str(job_id))
    if (method, path) == ("post", "/v1/images/edits"):
        return client.post(url, {"prompt": "x", "parameters": '{"steps": 0}'})  # no image: a 400
    body = BODIES.get((method, path))
    if body is not None:
        return client.generic(method.upper(), url, json.dumps(body), content_type="application/json")
    return client.generic(method.upper(), url)


@pytest.fixture
def ended_job(user) -> Prompt:
    """The owner's job, ended: its event stream answers at once."""
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.CANCELLED, error="Cancelled before it started.")
    return prompt


def test_the_matrix_covers_every_route():
    assert len(routes()) == 8


@pytest.mark.parametrize(("method", "path"), routes())
def test_no_key_and_a_revoked_key_open_no_route(method, path, user, ended_job):
    row, key = create_key(user, "old")
    revoke_key(row)

    for client in (Client(), key_client(key), key_client("csk_" + key[4:].upper())):
        response = call(client, method, path, ended_job.pk)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "path"), [r for r in routes() if "{pk}" in r[1]])
def test_another_users_key_finds_no_job_of_mine_and_staffs_finds_each(
    method, path, ended_job, other_api, staff_api, api
):
    assert call(other_api, method, path, ended_job.pk).status_code == 404
    assert call(api, method, path, ended_job.pk).status_code == 200
    assert call(staff_api, method, path, ended_job.pk).status_code == 200


@pytest.mark.parametrize(("method", "path"), [r for r in routes() if "{pk}" not in r[1]])
def test_routes_without_a_job_answer_a_valid_key_and_keep_to_its_owner(method, path, api, ended_job):
    response = call(api, method, path, ended_job.pk)

    assert response.status_code in (200, 400), (method, path, response.content)  # past the door
    if (method, path) == ("get", "/api/jobs"):
        assert [job["id"] for job in response.json()["data"]] == [ended_job.pk]


def test_the_list_shows_only_the_callers_jobs_even_for_staff(staff_api, ended_job):
    assert staff_api.get("/api/jobs").json()["data"] == []


def test_an_inactive_staff_members_key_opens_nothing(ended_job):
    staff = UserFactory(is_staff=True, is_active=False)
    _, key = create_key(staff, "gone")

    assert key_client(key).get(f"/api/jobs/{ended_job.pk}").status_code == 401
