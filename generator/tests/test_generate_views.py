"""The generation form: posting stores a job and answers with its card at once."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from generator.estimates import Measurement, record_run
from generator.models import Prompt

from .factories import PromptFactory, backend_with_models

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def valid_data(**overrides):
    return {
        "workflow": "txt2img",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "size": "768x512",
        "width": "512",
        "height": "512",
        "seed": "",
        "steps": "20",
        "cfg": "7",
        "sampler": "euler",
        "scheduler": "normal",
        "checkpoint": "v1-5-pruned-emaonly.safetensors",
        "batch_size": "1",
        **overrides,
    }


def test_the_place_a_new_card_shows_is_not_told_again_until_it_moves(user_client):
    from generator.jobs import moved_queue_places

    first = user_client.post(reverse("generate"), valid_data(), **HTMX)
    second = user_client.post(reverse("generate"), valid_data(prompt="a second one"), **HTMX)
    assert "#1 in the queue" in first.text
    assert "#2 in the queue" in second.text
    assert moved_queue_places() == []  # the cards said so already

    Prompt.objects.earliest("pk").transition_to(Prompt.Status.CANCELLED)
    [told] = moved_queue_places()
    assert "#1 in the queue" in told.html


def test_the_home_page_shows_the_form_with_choices_from_comfyui(user_client):
    response = user_client.get(reverse("home"))

    assert response.status_code == 200
    form = response.context["form"]
    assert "euler" in dict(form.fields["sampler"].choices)
    assert dict(form.fields["checkpoint"].choices) == {
        "v1-5-pruned-emaonly.safetensors": "v1-5-pruned-emaonly.safetensors"
    }
    assert 'ws-connect="/ws/jobs/"' in response.text


def test_a_workflow_whose_model_comfyui_lacks_says_which_one_the_form_uses_instead(user_client):
    backend_with_models("sdxl_base.safetensors", "dreamshaper_8.safetensors")

    response = user_client.get(reverse("home"))

    assert (
        "This workflow asks for the model “v1-5-pruned-emaonly.safetensors”, which ComfyUI "
        "doesn&#x27;t have; using “sdxl_base.safetensors”."
    ) in response.text
    assert '<option value="sdxl_base.safetensors" selected>' in response.text


def test_the_settings_reused_from_a_job_whose_model_is_gone_say_so(user_client, user):
    backend_with_models("sdxl_base.safetensors")
    earlier = PromptFactory(owner=user, params={**valid_data(), "checkpoint": "old_model.safetensors"})

    response = user_client.get(reverse("home"), {"reuse": earlier.pk})

    assert "The settings you reuse ask for the model “old_model.safetensors”" in response.text


def test_a_workflow_whose_model_comfyui_has_carries_no_note(user_client):
    backend_with_models("v1-5-pruned-emaonly.safetensors", "sdxl_base.safetensors")

    response = user_client.get(reverse("home"))

    assert "which ComfyUI doesn" not in response.text
    assert '<option value="v1-5-pruned-emaonly.safetensors" selected>' in response.text


def test_posting_the_form_queues_a_job_and_returns_its_card(user_client, user):
    response = user_client.post(reverse("generate"), valid_data(), **HTMX)

    assert response.status_code == 200
    prompt = Prompt.objects.get()
    assert prompt.owner == user
    assert prompt.status == Prompt.Status.QUEUED
    assert prompt.positive_text == "a lighthouse at dusk"
    assert (prompt.params["width"], prompt.params["height"]) == (768, 512)
    assert f'id="prompt-{prompt.pk}"' in response.text
    assert 'data-status="queued"' in response.text
    assert "#1 in the queue" in response.text


def test_posting_a_job_runs_the_same_few_queries_however_long_the_queue(user_client, other_user):
    with CaptureQueriesContext(connection) as alone:
        user_client.post(reverse("generate"), valid_data(), **HTMX)
    for _ in range(30):
        PromptFactory(owner=other_user)
    with CaptureQueriesContext(connection) as behind_others:
        response = user_client.post(reverse("generate"), valid_data(), **HTMX)

    assert 'data-status="queued"' in response.text
    # session, user, quotas (2), the insert with its turn (2), the jobs on GPUs, the place counted
    # from the queue's index, the rates for an estimate (none measured: no more), the place noted
    assert len(behind_others) == len(alone) <= 10, [q["sql"] for q in behind_others]


def test_with_a_measured_speed_a_post_still_runs_the_same_few_queries(user_client, other_user):
    user_client.post(reverse("generate"), valid_data(), **HTMX)
    params = Prompt.objects.get().params
    record_run("http://gpu", "txt2img", params, Measurement(20, 0.5, 2.0, 1.0))
    with CaptureQueriesContext(connection) as alone:
        user_client.post(reverse("generate"), valid_data(), **HTMX)
    for _ in range(30):
        PromptFactory(owner=other_user, params=params)
    with CaptureQueriesContext(connection) as behind_others:
        response = user_client.post(reverse("generate"), valid_data(), **HTMX)

    assert "to go" in response.text  # the card carries its estimate
    # As above, then for the estimate: the healthy backends and the first queued jobs' settings
    # (the jobs on GPUs are read once, for the place and the estimate).
    assert len(behind_others) == len(alone) <= 12, [q["sql"] for q in behind_others]


def test_an_empty_seed_means_random_and_the_drawn_seed_is_kept(user_client):
    user_client.post(reverse("generate"), valid_data(), **HTMX)
    user_client.post(reverse("generate"), valid_data(), **HTMX)

    seeds = [p.params["seed"] for p in Prompt.objects.all()]
    assert all(isinstance(seed, int) for seed in seeds)
    assert seeds[0] != seeds[1]


def test_a_chosen_seed_is_used(user_client):
    user_client.post(reverse("generate"), valid_data(seed="1234"), **HTMX)
    assert Prompt.objects.get().params["seed"] == 1234


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"prompt": ""}, "prompt", "This field is required."),
        ({"steps": "0"}, "steps", "greater than or equal to 1"),
        ({"steps": "500"}, "steps", "less than or equal to 150"),
        ({"sampler": "not-a-sampler"}, "sampler", "Select a valid choice"),
        ({"size": "custom", "width": "500"}, "width", "multiple of 8"),
        ({"cfg": "lots"}, "cfg", "Enter a number."),
    ],
)
def test_bad_input_returns_the_form_with_field_errors_and_queues_nothing(
    user_client, overrides, field, message
):
    response = user_client.post(reverse("generate"), valid_data(**overrides), **HTMX)

    assert response.status_code == 200
    assert response["HX-Retarget"] == "#generate-form"
    assert any(message in error for error in response.context["form"].errors[field])
    assert 'id="generate-form"' in response.text
    assert Prompt.objects.count() == 0


def test_the_form_refuses_a_post_without_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(reverse("generate"), valid_data(), **HTMX)

    assert response.status_code == 403
    assert Prompt.objects.count() == 0


def test_htmx_requests_carry_the_csrf_token_in_a_header(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get(reverse("home"))
    token = page.context["csrf_token"]

    response = client.post(reverse("generate"), valid_data(), HTTP_X_CSRFTOKEN=str(token), **HTMX)

    assert response.status_code == 200
    assert f'"X-CSRFToken": "{token}"' in page.text


def test_cancelling_a_queued_job_drops_it_at_once(user_client, user):
    prompt = PromptFactory(owner=user)

    response = user_client.post(reverse("job-cancel", args=[prompt.pk]), **HTMX)

    prompt.refresh_from_db()
    assert prompt.status == Prompt.Status.CANCELLED
    assert 'data-status="cancelled"' in response.text


def test_cancelling_a_running_job_asks_the_bridge_and_shows_cancelling(user_client, user):
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.RUNNING)

    response = user_client.post(reverse("job-cancel", args=[prompt.pk]), **HTMX)

    prompt.refresh_from_db()
    assert prompt.status == Prompt.Status.RUNNING
    assert prompt.cancel_requested_at is not None
    assert "Cancelling…" in response.text


def test_nobody_sees_or_cancels_another_users_job(user_client, other_user):
    prompt = PromptFactory(owner=other_user)

    assert user_client.get(reverse("job-card", args=[prompt.pk])).status_code == 404
    assert user_client.post(reverse("job-cancel", args=[prompt.pk])).status_code == 404
    prompt.refresh_from_db()
    assert prompt.status == Prompt.Status.QUEUED


def img2img_data(**overrides):
    data = valid_data(workflow="img2img", denoise="0.6", **overrides)
    for size_field in ("size", "width", "height", "batch_size"):
        data.pop(size_field, None)
    return data


def test_image_to_image_takes_an_upload_and_keeps_it_re_encoded(user_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from .factories import png_bytes

    upload = SimpleUploadedFile("photo.png", png_bytes((80, 60)), content_type="image/png")
    response = user_client.post(reverse("generate"), {**img2img_data(), "image": upload}, **HTMX)

    prompt = Prompt.objects.get()
    assert response.status_code == 200
    assert prompt.workflow == "img2img"
    with prompt.source_image.open("rb") as handle:
        assert handle.read().startswith(b"\x89PNG")
    assert "image" not in prompt.params


def test_image_to_image_without_an_image_asks_for_one(user_client):
    response = user_client.post(reverse("generate"), img2img_data(), **HTMX)

    assert "Choose an image to start from." in response.text
    assert Prompt.objects.count() == 0


def test_an_upload_that_is_not_an_image_is_refused_on_the_form(user_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    fake = SimpleUploadedFile("not_really.png", b"just text", content_type="image/png")
    response = user_client.post(reverse("generate"), {**img2img_data(), "image": fake}, **HTMX)

    assert response.context["form"].errors["image"]
    assert Prompt.objects.count() == 0


def test_switching_workflow_swaps_in_that_workflows_fields(user_client):
    response = user_client.get(reverse("generate-form"), {"workflow": "upscale"})

    fields = set(response.context["form"].fields)
    assert {"image", "scale", "method"} <= fields
    assert "prompt" not in fields
    assert "<html" not in response.text


def test_a_rejected_image_shows_a_note_on_its_job_card_not_a_broken_image(user_client, user):
    from .factories import GeneratedImageFactory

    image = GeneratedImageFactory(prompt=PromptFactory(owner=user), review_status="rejected")

    page = user_client.get(reverse("home")).text

    assert "Removed by a moderator" in page
    assert reverse("image-thumbnail", args=[image.pk]) not in page


def test_the_home_page_shows_the_newest_cards_and_counts_the_other_queued_jobs(user_client, user, settings):
    settings.JOB_CARDS = 5
    jobs = [PromptFactory(owner=user) for _ in range(8)]
    with CaptureQueriesContext(connection) as few:
        user_client.get(reverse("home"))
    jobs += [PromptFactory(owner=user) for _ in range(40)]

    with CaptureQueriesContext(connection) as many:
        response = user_client.get(reverse("home"))

    assert response.text.count("<article") == 5
    assert f'id="prompt-{jobs[-1].pk}"' in response.text
    assert "and 43 more queued" in response.text
    assert len(many) == len(few)
