"""Hostile and hopeless uploads, and sources a user may not use, are refused on the form with the
reason in words, and no job is queued. A fixed list, kept as regression cases."""

from __future__ import annotations

import html
import io
import struct
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from generator.models import GeneratedImage, Prompt

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 90, 160)).save(out, "PNG")
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge canvas, compressed to almost nothing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\0" * (width + 1) * 16, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def jpeg_with_broken_exif() -> bytes:
    """A photo whose EXIF holds text in a tag of numbers: Pillow's exif_transpose raised
    struct.error on it, which no one caught (a 500)."""
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotated, so exif_transpose reads the tags
    exif[0x010F] = "cam"  # Make, ASCII
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    data = bytearray(out.getvalue())
    make = data.index(b"\x01\x0f\x00\x02")
    data[make + 1] = 0x52  # now tag 0x0152, ExtraSamples, which holds integers
    return bytes(data)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="64" height="64"/></svg>'
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


def upscale(image: bytes | None = None, name: str = "photo.png", **overrides) -> dict:
    data = {"workflow": "upscale", "scale": "2", "method": "lanczos", **overrides}
    if image is not None:
        data["image"] = SimpleUploadedFile(name, image, content_type="image/png")
    return data


def img2img(image: bytes | None = None, name: str = "photo.png", **overrides) -> dict:
    data = {
        "workflow": "img2img",
        "prompt": "the same, in winter",
        "negative_prompt": "",
        "seed": "",
        "steps": "20",
        "cfg": "7",
        "sampler": "euler",
        "scheduler": "normal",
        "denoise": "0.6",
        "checkpoint": "v1-5-pruned-emaonly.safetensors",
        **overrides,
    }
    if image is not None:
        data["image"] = SimpleUploadedFile(name, image, content_type="image/png")
    return data


def refused(client, data: dict, field: str, reason: str) -> None:
    """The form came back with `reason` under `field` (and on the page), and nothing was queued."""
    jobs_before = Prompt.objects.count()

    response = client.post(reverse("generate"), data, **HTMX)

    assert response.status_code == 200
    assert response["HX-Retarget"] == "#generate-form"
    messages = " ".join(response.context["form"].errors.get(field, []))
    assert reason in messages, response.context["form"].errors
    assert reason in html.unescape(response.text)
    assert Prompt.objects.count() == jobs_before


@pytest.mark.parametrize(
    ("name", "upload", "reason"),
    [
        # 3.6 gigapixels in a few kilobytes: Pillow itself refuses to open it.
        (
            "bomb.png",
            bomb_png(60_000, 60_000),
            "more than 89 megapixels; at most 17 megapixels are accepted",
        ),
        # Under Pillow's bomb limit, over the site's.
        ("large.png", bomb_png(8_000, 8_000), "8000 × 8000 pixels; at most 17 megapixels are accepted"),
        ("cut.png", png((256, 256))[:300], "damaged or truncated"),
        ("photo.jpg", jpeg_with_broken_exif(), "damaged or truncated"),
        ("drawing.png", SVG, "not an image we can read; use PNG, JPEG or WebP"),
        ("page.png", HTML, "not an image we can read; use PNG, JPEG or WebP"),
        ("dot.png", png((1, 1)), "1 × 1 pixels; images must be at least 16 pixels on each side"),
        ("line.png", png((4000, 8)), "4000 × 8 pixels; images must be at least 16 pixels on each side"),
        (
            "ribbon.png",
            bomb_png(20_000, 16),
            "20000 × 16 pixels; images may be at most 16384 pixels on a side",
        ),
    ],
)
@pytest.mark.parametrize("form", [upscale, img2img])
def test_a_hostile_or_hopeless_upload_is_refused_with_the_reason(user_client, form, name, upload, reason):
    refused(user_client, form(upload, name=name), "image", reason)


def test_a_50_mb_file_is_refused_with_its_size(user_client):
    fifty_megabytes = png((64, 64)) + b"\0" * (50 * 1024 * 1024)

    refused(
        user_client, upscale(fifty_megabytes), "image", "This file is 50.0 MB; images may be at most 10.0 MB."
    )


def test_an_image_that_upscaled_would_exceed_the_limits_is_refused_on_the_scale(user_client):
    """4096 × 4096 is the largest upload; ×4 it would be 268 megapixels, which the site could
    store but never thumbnail or open again."""
    refused(
        user_client,
        upscale(png((4096, 4096)), scale="4"),
        "scale",
        "Scaled ×4, this 4096 × 4096 image would be 16384 × 16384 pixels; results may be at most "
        "17 megapixels, 16384 pixels on a side. Choose another scale or another image.",
    )


@pytest.mark.parametrize(("size", "scale"), [((4096, 4096), "1"), ((1024, 1024), "4"), ((16, 16), "2")])
def test_uploads_within_the_bounds_are_queued(user_client, size, scale):
    response = user_client.post(reverse("generate"), upscale(png(size), scale=scale), **HTMX)

    assert response.status_code == 200
    assert "HX-Retarget" not in response
    assert Prompt.objects.get().params["scale"] == float(scale)


def test_an_image_of_yours_too_large_to_upscale_that_much_is_refused_too(user_client, user):
    big = GeneratedImageFactory(prompt=PromptFactory(owner=user), width=2048, height=2048)

    refused(user_client, upscale(source_image=big.pk, scale="3"), "scale", "would be 6144 × 6144 pixels")


# -- sources the user may not use ----------------------------------------------------------------


def rejected_image(owner) -> GeneratedImage:
    return GeneratedImageFactory(
        prompt=PromptFactory(owner=owner), review_status=GeneratedImage.Review.REJECTED
    )


@pytest.mark.parametrize("form", [upscale, img2img])
def test_a_rejected_image_cannot_come_back_as_the_source_of_a_copy(user_client, user, form):
    """Its owner posted it to upscale at ×1 and got a visible, pixel-identical copy."""
    image = rejected_image(user)

    refused(
        user_client,
        form(source_image=image.pk, scale="1"),
        "source_image",
        "That image was removed by a moderator; it cannot be used to start from.",
    )


def test_an_image_waiting_for_review_cannot_be_a_source_when_images_show_only_once_approved(
    user_client, user, settings
):
    settings.SHOW_IMAGES_BEFORE_REVIEW = False
    image = GeneratedImageFactory(prompt=PromptFactory(owner=user))

    refused(user_client, upscale(source_image=image.pk), "source_image", "waiting for a moderator's review")


@pytest.mark.parametrize("value", ["theirs", "999999", "²", "١٢", "-1", "99999999999999999999", "x"])
def test_a_source_that_is_not_one_of_yours_says_so(user_client, other_user, value):
    theirs = GeneratedImageFactory(prompt=PromptFactory(owner=other_user))
    source = str(theirs.pk) if value == "theirs" else value

    refused(user_client, upscale(source_image=source), "source_image", "That image is not one of yours.")


@pytest.mark.parametrize("value", ["theirs", "999999", "²", "0"])
def test_an_earlier_job_that_is_not_yours_says_so(user_client, other_user, value):
    theirs = PromptFactory(owner=other_user)
    parent = str(theirs.pk) if value == "theirs" else value

    refused(
        user_client, upscale(png((64, 64)), parent=parent), "parent", "That earlier job is not one of yours."
    )


def test_a_refused_source_is_shown_with_its_label_and_not_sent_again(user_client, user):
    image = rejected_image(user)

    response = user_client.post(reverse("generate"), upscale(source_image=image.pk), **HTMX)

    page = html.unescape(response.text)
    assert "Source image: That image was removed by a moderator" in page
    assert f'value="{image.pk}"' not in page
    assert response.context["source_preview"] is None


def test_staff_may_start_from_any_image_they_may_see(client, staff_user, other_user):
    theirs = GeneratedImageFactory(prompt=PromptFactory(owner=other_user), review_status="approved")
    client.force_login(staff_user)

    response = client.post(reverse("generate"), upscale(source_image=theirs.pk, scale="1"), **HTMX)

    assert "HX-Retarget" not in response
    assert Prompt.objects.latest("pk").owner == staff_user


def test_your_own_visible_image_is_still_a_source(user_client, user):
    image = GeneratedImageFactory(prompt=PromptFactory(owner=user), width=96, height=64)

    response = user_client.post(reverse("generate"), upscale(source_image=image.pk), **HTMX)

    assert "HX-Retarget" not in response
    assert Prompt.objects.latest("pk").source_image


def test_every_form_shows_the_errors_of_its_hidden_fields():
    from django import forms
    from django.template.loader import render_to_string

    class WithHidden(forms.Form):
        name = forms.CharField()
        token = forms.IntegerField(label="Invitation", widget=forms.HiddenInput)

    form = WithHidden({"name": "x", "token": "²"})
    form.is_valid()

    page = html.unescape(render_to_string("partials/form_fields.html", {"form": form}))

    assert "Invitation: Enter a whole number." in page
