"""The async jobs API in-process: starting, validating, listing, reading and cancelling jobs.
(With the real bridge and emulator: test_live.py.)"""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from channels.layers import get_channel_layer
from django.utils import timezone

from generator.api import main
from generator.live import BRIDGE_GROUP
from generator.models import Prompt
from generator.tests.factories import GeneratedImageFactory, PromptFactory, backend_with_models, png_bytes

pytestmark = pytest.mark.django_db


def post_job(client, workflow="txt2img", headers=None, **parameters):
    body = {"workflow": workflow, "parameters": {"prompt": "a lighthouse at dusk", **parameters}}
    return client.post("/api/jobs", json.dumps(body), content_type="application/json", headers=headers or {})


def error_of(response):
    return response.json()["error"]


# -- starting a job -------------------------------------------------------------------------


def test_a_job_is_queued_at_once_with_the_forms_defaults(api, user):
    response = post_job(api, steps=12)

    assert response.status_code == 202
    job = response.json()
    prompt = Prompt.objects.get(pk=job["id"])
    assert (prompt.owner, prompt.status, prompt.via) == (user, "queued", "api")
    assert job["status"] == "queued"
    assert job["queue_place"] == 1
    assert job["parameters"]["steps"] == 12
    assert job["parameters"]["cfg"] == 7.0  # the workflow's default, as on the form
    assert isinstance(job["parameters"]["seed"], int)  # drawn, and kept with the job
    assert response["Location"].endswith(f"/api/jobs/{job['id']}")
    assert job["links"]["events"].endswith(f"/api/jobs/{job['id']}/events")
    assert job == api.get(f"/api/jobs/{job['id']}").json()  # the job as its own page shows it


def test_width_and_height_give_a_custom_size(api):
    job = post_job(api, width=640, height=384).json()

    assert (job["parameters"]["width"], job["parameters"]["height"]) == (640, 384)


@pytest.mark.parametrize(
    ("parameters", "param", "words"),
    [
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"steps": 10_000}, "steps", "less than or equal to 150"),
        ({"steps": "many"}, "steps", "whole number"),
        ({"sampler": "no-such-sampler"}, "sampler", "Select a valid choice"),
        ({"width": 500, "height": 512}, "width", "multiple of 8"),
        ({"prompt": ""}, "prompt", "required"),
        ({"steps": [1, 2]}, "steps", "single value"),
        ({"colour": "red"}, "colour", "no parameter 'colour'"),
        ({"source_image": 999_999}, "source_image", "not one of yours"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_field(api, parameters, param, words):
    response = post_job(api, **parameters)

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param
    assert words in error["message"]
    assert error["message"].startswith(f"{param}:") or param == "colour"
    assert not Prompt.objects.exists()


def test_an_unknown_workflow_is_a_400(api):
    response = post_job(api, workflow="sdxl-turbo")

    assert response.status_code == 400
    assert error_of(response)["param"] == "workflow"
    assert "txt2img" in error_of(response)["message"]


def test_a_body_that_is_not_json_is_a_400(api):
    response = api.post("/api/jobs", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


def test_an_image_job_takes_the_picture_as_base64(api):
    encoded = base64.b64encode(png_bytes((96, 64))).decode()

    response = post_job(api, workflow="img2img", image=encoded, denoise=0.5)

    assert response.status_code == 202, response.json()
    prompt = Prompt.objects.get(pk=response.json()["id"])
    assert prompt.source_image
    assert prompt.params["denoise"] == 0.5


@pytest.mark.parametrize(
    ("image", "words"),
    [("%%%", "not valid base64"), (base64.b64encode(b"<svg/>").decode(), "not an image"), (None, "Choose")],
)
def test_a_bad_or_missing_picture_is_refused_with_the_reason(api, image, words):
    parameters = {} if image is None else {"image": image}

    response = post_job(api, workflow="img2img", **parameters)

    assert response.status_code == 400
    assert error_of(response)["param"] == "image"
    assert words in error_of(response)["message"]


def test_the_queue_limit_is_a_429_with_retry_after(api, user, settings):
    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_queued": 2}
    post_job(api)
    post_job(api)

    response = post_job(api)

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert error_of(response)["code"] == "quota_exceeded"
    assert "2 jobs waiting" in error_of(response)["message"]
    assert Prompt.objects.count() == 2


def test_too_many_requests_is_a_429_with_retry_after(api, monkeypatch):
    throttle = main.api.throttle[0]
    monkeypatch.setattr(throttle, "num_requests", 3)

    answers = [api.get("/api/jobs").status_code for _ in range(4)]

    assert answers == [200, 200, 200, 429]
    response = api.get("/api/jobs")
    assert int(response["Retry-After"]) >= 1
    assert error_of(response)["type"] == "rate_limit_error"


# -- idempotency ----------------------------------------------------------------------------


def test_the_same_idempotency_key_gives_the_same_job(api):
    first = post_job(api, headers={"Idempotency-Key": "order-42"})
    again = post_job(api, headers={"Idempotency-Key": "order-42"})

    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert Prompt.objects.count() == 1


def test_an_idempotency_key_reused_for_another_request_is_refused(api):
    post_job(api, headers={"Idempotency-Key": "order-42"})

    response = post_job(api, steps=5, headers={"Idempotency-Key": "order-42"})

    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    assert Prompt.objects.count() == 1


def test_idempotency_keys_are_per_user_and_last_a_day(api, other_api):
    first = post_job(api, headers={"Idempotency-Key": "k"}).json()["id"]
    theirs = post_job(other_api, headers={"Idempotency-Key": "k"}).json()["id"]
    Prompt.objects.filter(pk=first).update(created_at=timezone.now() - datetime.timedelta(hours=25))

    later = post_job(api, headers={"Idempotency-Key": "k"}).json()["id"]

    assert len({first, theirs, later}) == 3


# -- webhooks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
        "not a url",
    ],
)
def test_a_webhook_url_into_the_sites_own_network_is_refused(api, url):
    body = {"workflow": "txt2img", "parameters": {"prompt": "x"}, "webhook_url": url}

    response = api.post("/api/jobs", json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["param"] == "webhook_url"
    assert not Prompt.objects.exists()


def test_the_operator_may_allow_private_webhook_urls(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    body = {"workflow": "txt2img", "parameters": {"prompt": "x"}, "webhook_url": "http://127.0.0.1:9/hook"}

    response = api.post("/api/jobs", json.dumps(body), content_type="application/json")

    assert response.status_code == 202
    assert response.json()["webhook_url"] == "http://127.0.0.1:9/hook"


# -- reading --------------------------------------------------------------------------------


def test_a_job_shows_its_outputs_with_signed_links_anyone_can_fetch_until_they_expire(api, user, client):
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.SUCCEEDED)
    image = GeneratedImageFactory(prompt=prompt)

    job = api.get(f"/api/jobs/{prompt.pk}").json()

    assert job["status"] == "succeeded"
    assert job["progress"] == 1.0
    [output] = job["outputs"]
    assert output["id"] == image.pk
    assert output["width"] == 64
    fetched = client.get(output["url"])  # no key, no session: the link is the permission
    assert fetched.status_code == 200
    assert fetched.content == image.file.open("rb").read()
    assert client.get(output["url"][:-3] + "xx/").status_code == 404


def test_an_expired_or_rejected_images_link_stops_working(api, user, client, settings):
    image = GeneratedImageFactory(prompt=PromptFactory(owner=user))
    url = api.get(f"/api/jobs/{image.prompt_id}").json()["outputs"][0]["url"]

    image.review_status = image.Review.REJECTED
    image.save()
    assert client.get(url).status_code == 404
    image.review_status = image.Review.APPROVED
    image.save()
    settings.API_LINK_SECONDS = -1
    assert client.get(url).status_code == 404


def test_another_users_job_is_a_404_and_staff_see_every_job(api, other_api, staff_api, user):
    prompt = PromptFactory(owner=user)

    assert other_api.get(f"/api/jobs/{prompt.pk}").status_code == 404
    assert other_api.delete(f"/api/jobs/{prompt.pk}").status_code == 404
    assert staff_api.get(f"/api/jobs/{prompt.pk}").status_code == 200
    assert api.get("/api/jobs/99999999999999999999").status_code == 404
    prompt.refresh_from_db()
    assert prompt.status == "queued"


def test_the_list_pages_through_your_jobs_newest_first(api, user, other_user):
    mine = [PromptFactory(owner=user).pk for _ in range(25)]
    PromptFactory(owner=other_user)

    seen, cursor = [], None
    while True:
        page = api.get("/api/jobs", {"limit": 10, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == sorted(mine, reverse=True)


def test_a_search_pages_through_every_match_once_with_ties_and_bounded_scans(api, user, settings):
    """The same pages as the history's: scans of 5 rows here, so 20 jobs take several pages."""
    settings.HISTORY_SCAN_ROWS = 5
    start = timezone.now() - datetime.timedelta(days=1)
    texts = ["a red fox", "a blue whale", "a Fox in snow", "an owl"]
    prompts = [
        PromptFactory(
            owner=user, positive_text=texts[n % 4], created_at=start + datetime.timedelta(hours=n // 3)
        )
        for n in range(20)
    ]
    wanted = [
        p.pk
        for p in sorted(prompts, key=lambda p: (p.created_at, p.pk), reverse=True)
        if "fox" in p.positive_text.lower()
    ]

    seen, cursor = [], None
    while True:
        page = api.get("/api/jobs", {"q": "fox", "limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["data"]]
        assert len(page["data"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == wanted


def test_the_list_filters_as_the_history_page_does(api, user):
    cat = PromptFactory(owner=user, positive_text="a cat on a roof")
    PromptFactory(owner=user, positive_text="a dog", workflow="upscale")
    failed = PromptFactory(owner=user, positive_text="a cat that failed")
    failed.transition_to(Prompt.Status.FAILED, error="No.")

    def ids(**query):
        return [job["id"] for job in api.get("/api/jobs", query).json()["data"]]

    assert ids(q="cat") == [failed.pk, cat.pk]
    assert ids(q="cat", status="queued") == [cat.pk]
    assert ids(workflow="txt2img", status="failed") == [failed.pk]
    assert ids(until="2000-01-01") == []
    assert len(ids(since="2000-01-01", until="9999-12-31")) == 3


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": "2025-13-45T00:00:00_1"},
        {"cursor": "2025-01-01T00:00:00_²"},
        {"cursor": "2025-01-01T00:00:00_99999999999999999999"},
        {"since": "9999-99-99"},
        {"status": "exploded"},
        {"limit": 0},
        {"limit": 101},
    ],
)
def test_a_bad_query_is_a_400(api, query):
    response = api.get("/api/jobs", query)

    assert response.status_code == 400
    assert error_of(response)["param"]


def test_workflows_list_each_parameter_with_its_type_bounds_and_choices(api):
    workflows = {w["name"]: w for w in api.get("/api/workflows").json()}

    assert {"txt2img", "img2img", "upscale"} <= set(workflows)
    parameters = {p["name"]: p for p in workflows["txt2img"]["parameters"]}
    assert parameters["steps"]["type"] == "integer"
    assert (parameters["steps"]["minimum"], parameters["steps"]["maximum"]) == (1, 150)
    assert parameters["prompt"]["required"] is True
    assert "euler" in parameters["sampler"]["choices"]
    assert workflows["img2img"]["takes_image"] is True
    assert {p["name"]: p for p in workflows["img2img"]["parameters"]}["image"]["type"] == "image"


def test_a_workflow_whose_model_comfyui_lacks_says_so_and_its_jobs_use_the_one_offered(api):
    backend_with_models("sdxl_base.safetensors")

    workflows = {w["name"]: w for w in api.get("/api/workflows").json()}
    job = post_job(api).json()

    txt2img = workflows["txt2img"]
    assert txt2img["notes"] == [
        "This workflow asks for the model “v1-5-pruned-emaonly.safetensors”, which ComfyUI doesn't "
        "have; using “sdxl_base.safetensors”."
    ]
    assert {p["name"]: p for p in txt2img["parameters"]}["checkpoint"]["default"] == "sdxl_base.safetensors"
    assert txt2img["available"] is True
    assert job["parameters"]["checkpoint"] == "sdxl_base.safetensors"


# -- cancelling -----------------------------------------------------------------------------


def test_cancelling_a_queued_job_drops_it_at_once(api, user):
    prompt = PromptFactory(owner=user)

    job = api.delete(f"/api/jobs/{prompt.pk}").json()

    assert job["status"] == "cancelled"
    assert job["error"] == "Cancelled before it started."


async def _bridge_hears():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(BRIDGE_GROUP, channel)
    return layer, channel


def test_cancelling_a_job_on_comfyui_asks_the_bridge_and_says_cancelling(api, user):
    from asgiref.sync import async_to_sync

    layer, channel = async_to_sync(_bridge_hears)()
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.RUNNING)

    job = api.delete(f"/api/jobs/{prompt.pk}").json()

    assert job["status"] == "running"
    assert job["cancelling"] is True
    assert async_to_sync(layer.receive)(channel) == {"type": "cancel.job", "prompt": prompt.pk}


def test_cancelling_a_job_that_ended_changes_nothing(api, user):
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.SUCCEEDED)

    job = api.delete(f"/api/jobs/{prompt.pk}").json()

    assert job["status"] == "succeeded"
    assert job["cancelling"] is False
