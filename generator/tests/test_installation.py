"""One installation among others on a shared ComfyUI: its identity, what the banner says of
backends no bridge drives, fields labelled by their role, and outputs too big for Pillow's guard."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from PIL import Image

from generator import jobs
from generator.backends import backend_summary, installation_key
from generator.models import Backend, GeneratedImage, Installation
from generator.workflows import map_parameters

from .factories import PromptFactory, UserFactory, backend, png_bytes

pytestmark = pytest.mark.django_db

RECORDED = Path(__file__).resolve().parents[1] / "comfy" / "tests" / "recordings" / "workflows"


# -- identity -----------------------------------------------------------------------------------------


def test_an_installation_has_one_identity_made_once_and_kept():
    first = installation_key()

    assert installation_key() == first
    assert Installation.objects.count() == 1
    assert len(first) == 32


def test_an_installation_whose_identity_row_went_missing_makes_a_new_one():
    Installation.objects.all().delete()

    assert len(installation_key()) == 32
    assert Installation.objects.count() == 1


# -- the banner -----------------------------------------------------------------------------------------


def test_a_backend_no_bridge_drives_does_not_hide_that_comfyui_is_unreachable():
    """Its URL was removed from the configuration: the row still says "online"."""
    backend("http://removed:8188", driven=False)
    backend("http://gpu:8188", online=False, message="connection lost: refused")

    summary = backend_summary()

    assert not summary.online
    assert summary.message == (
        "ComfyUI is unreachable (http://gpu:8188: connection lost: refused). Jobs wait in the queue."
    )


def test_with_no_bridge_driving_anything_comfyui_is_unreachable():
    backend("http://removed:8188", driven=False)

    summary = backend_summary()

    assert not summary.online
    assert "ComfyUI is unreachable (no bridge process is driving a backend)" in summary.message


def test_a_driven_backend_whose_bridge_stopped_reporting_is_not_up():
    stale = backend("http://gpu:8188")
    Backend.objects.filter(pk=stale.pk).update(checked_at=timezone.now() - datetime.timedelta(minutes=5))

    assert not backend_summary().online


def test_a_driven_healthy_backend_is_up_and_a_lease_ran_out_is_not():
    backend("http://gpu:8188")
    backend("http://old:8188", is_demo=True)
    Backend.objects.filter(url="http://old:8188").update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )

    summary = backend_summary()

    assert summary.online
    assert not summary.demo  # the demo row is no longer driven: it does not make the site a demo
    assert summary.message == ""


def test_every_page_shows_the_banner_when_only_an_undriven_row_says_online(client: Client):
    user = UserFactory()
    client.force_login(user)
    backend("http://removed:8188", driven=False)

    page = client.get("/history/")

    assert 'data-testid="backend-status"' in page.text
    assert "ComfyUI is unreachable" in page.text


# -- field labels ------------------------------------------------------------------------------------------


def test_text_encoders_sharing_one_title_are_labelled_by_their_role():
    """A frontend in Chinese exports both encoders as “CLIP文本编码”."""
    graph = json.loads((RECORDED / "txt2img.json").read_text())
    graph["6"]["_meta"]["title"] = graph["7"]["_meta"]["title"] = "CLIP文本编码"

    parameters = map_parameters(graph)

    assert (parameters["prompt"].label, parameters["negative_prompt"].label) == ("Prompt", "Negative prompt")


def test_a_title_only_one_node_carries_still_labels_its_field():
    graph = json.loads((RECORDED / "txt2img.json").read_text())
    graph["6"]["_meta"]["title"] = "Style"

    parameters = map_parameters(graph)

    assert (parameters["prompt"].label, parameters["negative_prompt"].label) == ("Style", "Negative prompt")


# -- outputs and their thumbnails ------------------------------------------------------------------------


def stored(data: bytes, filename: str = "comfysite/job1_00001_.png") -> GeneratedImage:
    prompt = PromptFactory()
    image = jobs.store_output(jobs._job(prompt), "9", 0, filename, data)
    assert image is not None
    return image


def test_an_output_over_pillows_decompression_bomb_limit_is_kept_with_a_thumbnail(monkeypatch):
    """Pillow refuses more than 2 × MAX_IMAGE_PIXELS (a 185-megapixel upscale): lowered here so a
    small output trips the same guard."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = png_bytes((96, 64))

    image = stored(data)

    assert (image.width, image.height, image.bytes) == (96, 64, len(data))
    with image.file.open("rb") as handle:
        assert handle.read() == data
    with image.thumbnail.open("rb") as handle:
        thumbnail = handle.read()
    assert thumbnail[:4] == b"RIFF"
    assert thumbnail[8:12] == b"WEBP"


def test_an_output_too_big_to_decode_is_kept_without_a_thumbnail(monkeypatch):
    monkeypatch.setattr(jobs, "THUMBNAIL_MAX_PIXELS", 1000)
    data = png_bytes((96, 64))

    image = stored(data)

    assert (image.width, image.height) == (96, 64)
    assert not image.thumbnail
    with image.file.open("rb") as handle:
        assert handle.read() == data


def test_an_output_that_is_no_image_is_kept_without_a_thumbnail():
    image = stored(b"not an image at all", "comfysite/job1_00001_.webm")

    assert (image.width, image.height, image.content_type) == (None, None, "video/webm")
    assert not image.thumbnail


def test_a_thumbnail_that_fails_for_any_reason_never_drops_the_output(monkeypatch):
    def broken_save(*args, **kwargs):
        raise RuntimeError("WebP encoder missing")

    data = png_bytes((96, 64))
    monkeypatch.setattr(Image.Image, "save", broken_save)

    image = stored(data)

    assert (image.width, image.height) == (96, 64)
    assert not image.thumbnail


def test_the_identity_is_shown_and_can_be_renewed_for_a_copied_database():
    from io import StringIO

    from django.core.management import call_command

    shown = StringIO()
    call_command("comfy_installation", stdout=shown)
    renewed = StringIO()
    call_command("comfy_installation", "--renew", stdout=renewed)

    assert shown.getvalue().strip() != renewed.getvalue().strip()
    assert renewed.getvalue().strip() == installation_key()


def test_what_the_form_offers_comes_from_driven_backends_not_one_taken_out_of_service():
    from generator.backends import node_catalog

    removed = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["gone.safetensors"], {}]}}}}
    live = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["here.safetensors"], {}]}}}}
    backend("http://removed:8188", driven=False, object_info=removed, node_classes=["CheckpointLoaderSimple"])
    backend("http://gpu:8188", online=False, object_info=live, node_classes=["CheckpointLoaderSimple"])

    assert node_catalog().object_info == live
    Backend.objects.filter(url="http://gpu:8188").delete()
    assert node_catalog().object_info == removed  # nothing driven: the last seen is better than nothing
