"""The job state machine on Prompt, and the invariants of GeneratedImage."""

import pytest
from django.db import IntegrityError

from generator.models import IllegalTransition, Prompt

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db

S = Prompt.Status


def test_a_new_prompt_is_queued():
    assert PromptFactory().status == S.QUEUED


def test_a_job_runs_through_its_happy_path_and_is_stamped():
    prompt = PromptFactory()
    prompt.transition_to(S.SUBMITTED, backend="http://gpu1:8188")
    prompt.transition_to(S.RUNNING)
    prompt.transition_to(S.SUCCEEDED)

    prompt.refresh_from_db()
    assert prompt.status == S.SUCCEEDED
    assert prompt.backend == "http://gpu1:8188"
    assert prompt.started_at is not None
    assert prompt.finished_at >= prompt.started_at
    assert prompt.progress == 1.0


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], S.RUNNING),
        ([], S.SUCCEEDED),
        ([S.SUBMITTED, S.RUNNING, S.SUCCEEDED], S.RUNNING),
        ([S.SUBMITTED, S.RUNNING, S.SUCCEEDED], S.FAILED),
        ([S.CANCELLED], S.QUEUED),
        ([S.FAILED], S.SUBMITTED),
        ([S.SUBMITTED, S.RUNNING], S.SUBMITTED),
    ],
)
def test_illegal_status_transitions_raise_and_change_nothing(path, illegal):
    prompt = PromptFactory()
    for status in path:
        prompt.transition_to(status)

    with pytest.raises(IllegalTransition):
        prompt.transition_to(illegal)

    prompt.refresh_from_db()
    assert prompt.status == (path[-1] if path else S.QUEUED)


def test_a_job_lost_by_its_backend_goes_back_to_the_queue_clean():
    prompt = PromptFactory()
    prompt.transition_to(S.SUBMITTED, backend="http://gpu1:8188")
    prompt.transition_to(S.RUNNING, progress=0.4)

    prompt.transition_to(S.QUEUED)

    prompt.refresh_from_db()
    assert (prompt.status, prompt.backend, prompt.progress, prompt.started_at) == (S.QUEUED, "", 0.0, None)


def test_failure_keeps_its_error_text():
    prompt = PromptFactory()
    prompt.transition_to(S.FAILED, error="ComfyUI is unreachable")

    prompt.refresh_from_db()
    assert prompt.error == "ComfyUI is unreachable"
    assert prompt.is_final


def test_an_output_cannot_be_imported_twice():
    image = GeneratedImageFactory(node_id="9", output_index=0)

    with pytest.raises(IntegrityError):
        GeneratedImageFactory(prompt=image.prompt, node_id="9", output_index=0)


def test_an_image_belongs_to_the_owner_of_its_prompt():
    image = GeneratedImageFactory()
    assert image.owner == image.prompt.owner


def test_models_read_well_in_the_admin():
    prompt = PromptFactory(positive_text="a red fox")
    image = GeneratedImageFactory(prompt=prompt, node_id="9", output_index=1)

    assert str(prompt) == f"#{prompt.pk} a red fox (queued)"
    assert str(image) == f"Image {image.pk} of prompt {prompt.pk} (node 9 #1)"
