"""OpenAI's Images API in-process: how its fields map onto a workflow, and how a job that did
not succeed is answered. (With OpenAI's client and the real bridge: test_live.py.)"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import RequestFactory

from generator.api.errors import ApiError
from generator.api.openai_images import _answer
from generator.models import Prompt
from generator.tests.factories import PromptFactory, UserFactory

pytestmark = pytest.mark.django_db


def generate(client, **body):
    return client.post("/v1/images/generations", json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"size": "big"}, "size", "width x height"),
        ({"size": "512x512x3"}, "size", "width x height"),
        ({"n": 0}, "n", "between 1 and 10"),
        ({"n": 2, "model": "upscale"}, "n", "one image per request"),
        ({"model": "txt2img", "workflow": "img2img"}, "model", "different workflows"),
        ({"model": "gpt-image-1"}, "model", "no workflow 'gpt-image-1'"),
        ({"response_format": "jpeg"}, "response_format", "url"),
        ({"parameters": {"steps": 0}}, "steps", "greater than or equal to 1"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
    ],
)
def test_bad_requests_are_openai_shaped_400s_and_start_nothing(api, body, param, words):
    response = generate(api, **{"prompt": "a lighthouse", **body})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert not Prompt.objects.exists()


def test_an_edit_needs_a_workflow_that_takes_an_image(api):
    response = api.post("/v1/images/edits", {"prompt": "x", "model": "txt2img", "image": b""})

    assert response.status_code == 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (Prompt.Status.FAILED, "KSampler (node 3): “steps” must be at least 1 (got 0)", "job_failed"),
        (Prompt.Status.CANCELLED, "Cancelled while it ran.", "job_cancelled"),
    ],
)
async def test_a_job_that_did_not_succeed_is_a_422_with_its_reason(status, error, code):
    user = await sync_to_async(UserFactory)()

    def ended() -> Prompt:
        prompt = PromptFactory(owner=user)
        prompt.transition_to(Prompt.Status.SUBMITTED)
        prompt.transition_to(status, error=error)
        return prompt

    prompt = await sync_to_async(ended)()
    request = RequestFactory().post("/v1/images/generations")
    request.user = user
    try:
        with pytest.raises(ApiError) as raised:
            await _answer(request, prompt.pk, "url")
    finally:
        await sync_to_async(connections.close_all)()

    assert raised.value.status == 422  # not 5xx, which OpenAI's client would send again
    assert raised.value.message == error
    assert raised.value.code == code
    assert raised.value.extra == {"job": prompt.pk}
