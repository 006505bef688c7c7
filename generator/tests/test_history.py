"""History: a private gallery, image details, favourites, deletion, downloads, and who may see what."""

import io
import zipfile

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image

from generator.models import GeneratedImage, Prompt

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(user):
    return GeneratedImageFactory(
        prompt=PromptFactory(owner=user, positive_text="a quiet harbour", params={"seed": 7})
    )


# -- the authorization matrix ---------------------------------------------------------------

IMAGE_URLS = [
    ("GET", "image-file"),
    ("GET", "image-thumbnail"),
    ("GET", "image-detail"),
    ("GET", "image-download"),
    ("POST", "image-favourite"),
    ("POST", "image-delete"),
]
# Expected status per role: anonymous → log-in page, stranger → 404, owner and staff → allowed.
EXPECTED = {
    "anonymous": {"GET": 302, "POST": 302},
    "other": {"GET": 404, "POST": 404},
    "owner": {"GET": 200, "POST": (200, 302)},
    "staff": {"GET": 200, "POST": (200, 302, 404)},
}


@pytest.mark.parametrize(("method", "name"), IMAGE_URLS)
@pytest.mark.parametrize("role", ["anonymous", "other", "owner", "staff"])
def test_image_urls_answer_each_role_as_expected(client, image, other_user, staff_user, role, method, name):
    who = {"owner": image.owner, "other": other_user, "staff": staff_user}.get(role)
    if who:
        client.force_login(who)
    url = reverse(name, args=[image.pk])

    response = client.get(url) if method == "GET" else client.post(url)

    expected = EXPECTED[role][method]
    assert response.status_code in (expected if isinstance(expected, tuple) else (expected,))
    if role in ("anonymous", "other"):
        body = getattr(response, "content", b"")
        assert not body.startswith(b"\x89PNG")
        assert GeneratedImage.objects.filter(pk=image.pk).exists()


def test_staff_may_favourite_only_their_own_images_but_see_everything(client, image, staff_user):
    client.force_login(staff_user)
    assert client.get(reverse("image-file", args=[image.pk])).status_code == 200
    assert client.post(reverse("image-favourite", args=[image.pk])).status_code == 404


def test_the_staff_overview_is_for_staff_only(user_client, client, staff_user):
    assert user_client.get(reverse("staff-overview")).status_code == 404
    client.force_login(staff_user)
    assert client.get(reverse("staff-overview")).status_code == 200


# -- the gallery ----------------------------------------------------------------------------


def test_history_shows_my_images_newest_first_and_not_anyone_elses(user_client, user, other_user):
    old = GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="old harbour"))
    new = GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="new harbour"))
    theirs = GeneratedImageFactory(prompt=PromptFactory(owner=other_user, positive_text="their secret"))

    response = user_client.get(reverse("history"))

    ids = [row.pk for row in response.context["page"].rows]
    assert ids == [new.pk, old.pk]
    assert theirs.pk not in ids
    assert "their secret" not in response.text
    assert "2 images" in response.text


def test_history_pages_continue_where_the_last_stopped(user_client, user, settings):
    images = [GeneratedImageFactory(prompt=PromptFactory(owner=user)) for _ in range(45)]

    first = user_client.get(reverse("history"))
    cursor = first.context["page"].next_cursor
    second = user_client.get(reverse("history"), {"cursor": cursor}, HTTP_HX_REQUEST="true")

    seen = [r.pk for r in first.context["page"].rows] + [r.pk for r in second.context["page"].rows]
    assert seen == [i.pk for i in reversed(images)]
    assert 'hx-trigger="revealed"' in first.text
    assert second.context["page"].next_cursor is None
    assert "<html" not in second.text  # a fragment for htmx to append


def test_history_filters_by_search_workflow_and_favourites(user_client, user):
    fox = GeneratedImageFactory(
        prompt=PromptFactory(owner=user, positive_text="a red fox"), is_favourite=True
    )
    GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="a blue whale"))

    by_text = user_client.get(reverse("history"), {"q": "FOX"}).context["page"].rows
    favourites = user_client.get(reverse("history"), {"favourites": "on"}).context["page"].rows

    assert [r.pk for r in by_text] == [fox.pk]
    assert [r.pk for r in favourites] == [fox.pk]


def test_failed_and_cancelled_jobs_are_listed_with_their_reason(user_client, user):
    prompt = PromptFactory(owner=user)
    prompt.transition_to(Prompt.Status.FAILED, error="KSampler failed: out of memory")

    response = user_client.get(reverse("history"), {"show": "failed"})

    assert "KSampler failed: out of memory" in response.text
    assert f'id="prompt-{prompt.pk}"' in response.text


def test_the_history_page_runs_a_fixed_number_of_queries(user_client, user):
    for _ in range(3):
        GeneratedImageFactory(prompt=PromptFactory(owner=user))
    with CaptureQueriesContext(connection) as few:
        user_client.get(reverse("history"))
    for _ in range(40):
        GeneratedImageFactory(prompt=PromptFactory(owner=user))
    with CaptureQueriesContext(connection) as many:
        user_client.get(reverse("history"))

    assert len(many) == len(few)


# -- one image ------------------------------------------------------------------------------


def test_the_detail_page_shows_the_prompt_and_every_parameter(user_client, image):
    response = user_client.get(reverse("image-detail", args=[image.pk]))

    assert "a quiet harbour" in response.text
    assert "<dt>Seed</dt>" in response.text
    assert reverse("image-file", args=[image.pk]) in response.text


def test_favourite_toggles(user_client, image):
    url = reverse("image-favourite", args=[image.pk])

    assert "★ Favourite" in user_client.post(url, HTTP_HX_REQUEST="true").text
    image.refresh_from_db()
    assert image.is_favourite
    user_client.post(url)
    image.refresh_from_db()
    assert not image.is_favourite


def test_deleting_an_image_removes_its_files(user_client, image, django_capture_on_commit_callbacks):
    storage = image.file.storage
    paths = [image.file.name, image.thumbnail.name]
    assert all(storage.exists(p) for p in paths)

    with django_capture_on_commit_callbacks(execute=True):
        response = user_client.post(reverse("image-delete", args=[image.pk]))

    assert response.status_code == 302
    assert not GeneratedImage.objects.filter(pk=image.pk).exists()
    assert not any(storage.exists(p) for p in paths)


def test_downloads_drop_the_workflow_graph_and_keep_readable_parameters(user_client, image):
    response = user_client.get(reverse("image-download", args=[image.pk]))

    downloaded = Image.open(io.BytesIO(response.content))
    assert "prompt" not in downloaded.text
    assert "workflow" not in downloaded.text
    assert "a quiet harbour" in downloaded.text["parameters"]
    assert "seed: 7" in downloaded.text["parameters"]
    with image.file.open("rb") as stored:
        assert Image.open(stored).text["prompt"]  # the stored file keeps its bytes
    assert response["Content-Disposition"].startswith("attachment;")


def test_downloads_keep_the_graph_when_the_site_says_so(user_client, image, settings):
    settings.DOWNLOAD_KEEPS_WORKFLOW = True
    response = user_client.get(reverse("image-download", args=[image.pk]))
    with image.file.open("rb") as stored:
        assert response.content == stored.read()


def test_bulk_zip_download_holds_the_selected_images(user_client, user):
    chosen = [GeneratedImageFactory(prompt=PromptFactory(owner=user)) for _ in range(2)]
    GeneratedImageFactory(prompt=PromptFactory(owner=user))

    response = user_client.post(reverse("history-bulk"), {"action": "zip", "images": [i.pk for i in chosen]})

    assert response.streaming  # an image at a time, not the whole zip in memory
    names = zipfile.ZipFile(io.BytesIO(b"".join(response))).namelist()
    assert len(names) == 2


def test_a_zip_of_only_removed_images_says_there_is_nothing_to_download(user_client, user):
    removed = GeneratedImageFactory(prompt=PromptFactory(owner=user), review_status="rejected")

    response = user_client.post(
        reverse("history-bulk"), {"action": "zip", "images": [removed.pk]}, follow=True
    )

    assert response["Content-Type"].startswith("text/html")
    assert "None of the selected images can be downloaded" in response.text


def test_bulk_messages_count_in_words(user_client, user):
    one = GeneratedImageFactory(prompt=PromptFactory(owner=user))

    marked = user_client.post(
        reverse("history-bulk"), {"action": "favourite", "images": [one.pk]}, follow=True
    )
    deleted = user_client.post(reverse("history-bulk"), {"action": "delete", "images": [one.pk]}, follow=True)

    assert "Marked 1 image as favourite." in marked.text
    assert "Deleted 1 image." in deleted.text


def test_bulk_delete_touches_only_my_images(user_client, user, other_user):
    mine = GeneratedImageFactory(prompt=PromptFactory(owner=user))
    theirs = GeneratedImageFactory(prompt=PromptFactory(owner=other_user))

    user_client.post(reverse("history-bulk"), {"action": "delete", "images": [mine.pk, theirs.pk]})

    assert not GeneratedImage.objects.filter(pk=mine.pk).exists()
    assert GeneratedImage.objects.filter(pk=theirs.pk).exists()


# -- moderation -----------------------------------------------------------------------------


def test_rejected_images_are_hidden_from_their_owner_with_a_note(user_client, image):
    image.review_status = GeneratedImage.Review.REJECTED
    image.save()

    assert user_client.get(reverse("image-file", args=[image.pk])).status_code == 404
    assert "Removed by a moderator" in user_client.get(reverse("history")).text
    assert "removed by a moderator" in user_client.get(reverse("image-detail", args=[image.pk])).text


def test_unreviewed_images_wait_for_approval_when_the_site_says_so(user_client, image, settings):
    settings.SHOW_IMAGES_BEFORE_REVIEW = False
    assert user_client.get(reverse("image-file", args=[image.pk])).status_code == 404

    image.review_status = GeneratedImage.Review.APPROVED
    image.save()
    assert user_client.get(reverse("image-file", args=[image.pk])).status_code == 200


def test_admin_bulk_approve_marks_the_reviewer(client, staff_user, image):
    client.force_login(staff_user)

    response = client.post(
        reverse("admin:generator_generatedimage_changelist"),
        {"action": "approve", "_selected_action": [image.pk]},
        follow=True,
    )

    image.refresh_from_db()
    assert response.status_code == 200
    assert image.review_status == GeneratedImage.Review.APPROVED
    assert image.reviewed_by == staff_user


def test_admin_image_list_and_detail_render_with_thumbnails(client, staff_user, image):
    client.force_login(staff_user)

    listing = client.get(reverse("admin:generator_generatedimage_changelist"))
    detail = client.get(reverse("admin:generator_generatedimage_change", args=[image.pk]))

    assert reverse("image-thumbnail", args=[image.pk]) in listing.text
    assert "a quiet harbour" in detail.text


def test_admin_retry_queues_failed_prompts_again(client, staff_user, user):
    failed = PromptFactory(owner=user)
    failed.transition_to(Prompt.Status.FAILED, error="boom")
    client.force_login(staff_user)

    client.post(
        reverse("admin:generator_prompt_changelist"),
        {"action": "retry_failed", "_selected_action": [failed.pk]},
    )

    retry = Prompt.objects.exclude(pk=failed.pk).get()
    assert retry.status == Prompt.Status.QUEUED
    assert retry.positive_text == failed.positive_text


def test_with_100000_images_first_and_later_pages_run_the_same_few_queries(client):
    from .bulk import fill_history

    owner = fill_history(users=100, images_for_first=100_000)[0]
    client.force_login(owner)
    with CaptureQueriesContext(connection) as first_page:
        first = client.get(reverse("history"))
    cursor = first.context["page"].next_cursor
    for _ in range(3):  # walk a few pages in, as scrolling does
        cursor = (
            client.get(reverse("history"), {"cursor": cursor}, HTTP_HX_REQUEST="true")
            .context["page"]
            .next_cursor
        )
    with CaptureQueriesContext(connection) as later_page:
        later = client.get(reverse("history"), {"cursor": cursor}, HTTP_HX_REQUEST="true")

    assert len(first.context["page"].rows) == len(later.context["page"].rows) == 40
    # session + user + page of images (with their prompts) + totals; the later fragment skips totals
    assert len(first_page) <= 5, [q["sql"] for q in first_page]
    assert len(later_page) <= 4, [q["sql"] for q in later_page]
    assert "100000 images" in first.text


def test_refine_opens_image_to_image_with_the_image_and_its_prompt(user_client, image):
    detail = user_client.get(reverse("image-detail", args=[image.pk]))
    assert f"?refine={image.pk}" in detail.text

    form_page = user_client.get(reverse("home"), {"refine": image.pk})

    assert form_page.context["workflow"].name == "img2img"
    assert form_page.context["form"]["prompt"].value() == "a quiet harbour"
    assert form_page.context["source_preview"] == image


def test_refine_then_generate_remembers_the_parent_and_the_source(user_client, image):
    from .test_generate_views import HTMX

    response = user_client.post(
        reverse("generate"),
        {
            "workflow": "img2img",
            "prompt": "the harbour at night",
            "negative_prompt": "",
            "seed": "",
            "steps": "20",
            "cfg": "7",
            "sampler": "euler",
            "scheduler": "normal",
            "denoise": "0.5",
            "checkpoint": "v1-5-pruned-emaonly.safetensors",
            "source_image": image.pk,
            "parent": image.prompt_id,
        },
        **HTMX,
    )

    child = Prompt.objects.exclude(pk=image.prompt_id).get()
    assert response.status_code == 200
    assert child.parent_id == image.prompt_id
    assert child.source_image.name
    with image.file.open("rb") as original, child.source_image.open("rb") as copy:
        assert copy.read() == original.read()


def test_reuse_settings_fills_the_form_with_the_jobs_parameters(user_client, user):
    prompt = PromptFactory(owner=user, positive_text="a fox", params={"seed": 99, "steps": 33, "cfg": 5.5})

    form = user_client.get(reverse("home"), {"reuse": prompt.pk}).context["form"]

    assert (form["prompt"].value(), form["seed"].value(), form["steps"].value()) == ("a fox", 99, 33)
    assert form["parent"].value() == prompt.pk


def test_someone_elses_image_cannot_be_refined(user_client, other_user):
    theirs = GeneratedImageFactory(prompt=PromptFactory(owner=other_user))
    assert user_client.get(reverse("home"), {"refine": theirs.pk}).status_code == 404


@pytest.mark.parametrize(
    ("mode", "header"), [("x-accel-redirect", "X-Accel-Redirect"), ("x-sendfile", "X-Sendfile")]
)
def test_the_web_server_can_send_media_after_the_permission_check(user_client, image, settings, mode, header):
    settings.MEDIA_SENDFILE = mode

    response = user_client.get(reverse("image-file", args=[image.pk]))

    assert response.status_code == 200
    assert response.content == b""
    assert response[header].endswith(image.file.name)


def test_sendfile_does_not_bypass_the_check(client, other_user, image, settings):
    settings.MEDIA_SENDFILE = "x-accel-redirect"
    client.force_login(other_user)

    response = client.get(reverse("image-file", args=[image.pk]))

    assert response.status_code == 404
    assert "X-Accel-Redirect" not in response


def test_staff_see_each_backends_health_device_and_work(client, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    from generator.models import Backend

    now = timezone.now()
    lease = {"lease_owner": "gpu-host:4242:abc", "lease_expires_at": now + timedelta(seconds=10)}
    stats = {"devices": [{"name": "NVIDIA RTX 4090", "vram_total": 24 * 1024**3, "vram_free": 20 * 1024**3}]}
    Backend.objects.create(
        url="http://gpu-a:8188", label="GPU A", online=True, checked_at=now, system_stats=stats, **lease
    )
    Backend.objects.create(
        url="http://gpu-b:8188", online=False, status_message="connection refused", offline_since=now, **lease
    )
    Backend.objects.create(url="http://gpu-c:8188", online=True, checked_at=now)  # no bridge holds it
    running = PromptFactory()
    running.transition_to(Prompt.Status.SUBMITTED, backend="http://gpu-a:8188")
    running.transition_to(Prompt.Status.RUNNING)
    client.force_login(staff_user)

    page = client.get(reverse("staff-overview")).content.decode()

    assert "GPU A" in page
    assert "NVIDIA RTX 4090 · 20.0 of 24.0 GiB free" in page
    assert "Unreachable since" in page
    assert "connection refused" in page
    assert "No bridge process is driving it." in page
    assert page.count("gpu-host:4242:abc") == 2
    row_a = page[page.index("GPU A") :].split("</tr>")[0]
    assert "<td>1</td>" in row_a  # its running job
