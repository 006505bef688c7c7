"""A job's settings as its pages show them: the form's words, not the graph's."""

from __future__ import annotations

import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from generator.models import Prompt
from generator.templatetags.jobs import duration

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (4.24, "4.2 s"),
        (59.9, "59.9 s"),
        (60, "1 min"),
        (185, "3 min 5 s"),
        (3720, "1 h 2 min"),
        (7200, "2 h"),
    ],
)
def test_run_times_read_in_seconds_minutes_and_hours(seconds, words):
    assert duration(datetime.timedelta(seconds=seconds)) == words


def test_the_image_page_labels_settings_as_the_form_does(user_client, user):
    prompt = PromptFactory(owner=user, params={"seed": 7, "cfg": 6.5, "batch_size": 1})
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.RUNNING)
    Prompt.objects.filter(pk=prompt.pk).update(started_at=timezone.now() - datetime.timedelta(seconds=12))
    prompt.refresh_from_db()
    prompt.transition_to(Prompt.Status.SUCCEEDED)
    image = GeneratedImageFactory(prompt=prompt)

    page = user_client.get(reverse("image-detail", args=[image.pk])).text

    assert "<dd>Text to image</dd>" in page  # the workflow's title, not its file name
    assert "<dt>CFG scale</dt><dd>6.5</dd>" in page
    assert "<dt>Seed</dt><dd>7</dd>" in page
    assert "<dt>cfg</dt>" not in page
    assert "12." in page.split("Run time")[1][:40]
    assert "0 minutes" not in page
