"""History at scale: keyset pages by row value, bounded search, totals kept as images change."""

import datetime
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from generator import history
from generator.models import GeneratedImage, Prompt
from generator.stats import install_totals_triggers, user_totals

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db

START = timezone.now().replace(microsecond=0) - datetime.timedelta(days=3)
TEXTS = ["a red fox", "a blue whale", "a Fox in snow", "an owl"]
WORKFLOWS = ["txt2img", "img2img", "upscale"]


def varied_prompt(owner, n, created_at):
    """The `n`th of a series of prompts that cycle through TEXTS and WORKFLOWS."""
    return PromptFactory(
        owner=owner,
        positive_text=TEXTS[n % len(TEXTS)],
        workflow=WORKFLOWS[n % len(WORKFLOWS)],
        created_at=created_at,
    )


@pytest.fixture
def gallery(user, other_user):
    """Images of `user` made in threes at the same moment (ties for the cursor), over three days,
    with several texts and workflows, some favourites; and a stranger's matching images."""
    images = []
    for n in range(18):
        prompt = varied_prompt(user, n, START + datetime.timedelta(hours=4 * n))
        for index in range(3):
            images.append(
                GeneratedImageFactory(
                    prompt=prompt,
                    output_index=index,
                    is_favourite=(n + index) % 4 == 0,
                    created_at=prompt.created_at,
                )
            )
    theirs = PromptFactory(owner=other_user, positive_text="a red fox", created_at=START)
    GeneratedImageFactory(prompt=theirs, created_at=START)
    return images


@pytest.fixture
def small_pages(monkeypatch, settings):
    """Pages of 4 and scans of 5 rows, so a few dozen rows cross many pages and scan windows."""
    monkeypatch.setattr(history, "PAGE_SIZE", 4)
    settings.HISTORY_SCAN_ROWS = 5


def newest_first(rows):
    return sorted(rows, key=lambda row: (row.created_at, row.pk), reverse=True)


def expected_images(images, favourites=False, q="", workflow="", since=None, until=None):
    def wanted(image):
        day = image.created_at.astimezone(datetime.UTC).date()
        return (
            (not favourites or image.is_favourite)
            and q.lower() in image.prompt.positive_text.lower()
            and (not workflow or image.prompt.workflow == workflow)
            and (since is None or day >= since)
            and (until is None or day <= until)
        )

    return [image.pk for image in newest_first(filter(wanted, images))]


def scroll(client, query):
    """Every row the history page shows for `query`, following its cursors as htmx does."""
    first = client.get(reverse("history"), query)
    assert first.status_code == 200
    page = first.context["page"]
    seen, requests = [row.pk for row in page.rows], 1
    while page.next_cursor:
        response = client.get(
            reverse("history"), {**query, "cursor": page.next_cursor}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 200
        page, requests = response.context["page"], requests + 1
        seen += [row.pk for row in page.rows]
        assert requests < 100
    return seen


FILTERS = [
    {},
    {"favourites": True},
    {"q": "fox"},
    {"q": "FOX", "favourites": True},
    {"workflow": "img2img"},
    {"q": "fox", "workflow": "txt2img"},
    {"since": (START + datetime.timedelta(days=1)).date()},
    {"until": (START + datetime.timedelta(days=1)).date()},
    {"q": "whale", "since": (START + datetime.timedelta(days=1)).date(), "favourites": True},
    {"q": "zebra"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_scrolling_shows_every_matching_image_once_in_order_whatever_the_filters(
    user_client, gallery, small_pages, filters
):
    query = {name: ("on" if value is True else value) for name, value in filters.items()}

    assert scroll(user_client, query) == expected_images(gallery, **filters)


@pytest.mark.parametrize(
    "filters", [{}, {"q": "fox"}, {"workflow": "upscale"}, {"q": "owl", "workflow": "upscale"}]
)
def test_failed_jobs_page_through_every_match_once(user_client, user, small_pages, filters):
    failed = []
    for n in range(14):
        prompt = varied_prompt(user, n, START + datetime.timedelta(hours=n // 2))  # pairs share a time
        prompt.transition_to(Prompt.Status.FAILED, error="out of memory")
        failed.append(prompt)
    PromptFactory(owner=user, positive_text="a red fox")  # queued: not on the failed page

    wanted = [
        p.pk
        for p in newest_first(failed)
        if filters.get("q", "") in p.positive_text.lower()
        and filters.get("workflow", p.workflow) == p.workflow
    ]
    assert scroll(user_client, {"show": "failed", **filters}) == wanted


def test_a_search_reads_a_bounded_stretch_of_the_users_rows(user_client, user, small_pages):
    match = GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="the one lighthouse"))
    for _ in range(12):
        GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="a field"))

    first = user_client.get(reverse("history"), {"q": "lighthouse"})

    # The 5 newest rows hold no match: the page says so by being empty, and loads more by itself.
    assert first.context["page"].rows == []
    assert 'hx-trigger="revealed"' in first.text
    assert "Nothing here yet" not in first.text
    assert scroll(user_client, {"q": "lighthouse"}) == [match.pk]


def test_a_search_whose_last_stretch_is_full_stops_there(user_client, user, small_pages):
    match = GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="the one lighthouse"))
    for _ in range(9):
        GeneratedImageFactory(prompt=PromptFactory(owner=user, positive_text="a field"))

    first = user_client.get(reverse("history"), {"q": "lighthouse"}).context["page"]
    last = user_client.get(
        reverse("history"), {"q": "lighthouse", "cursor": first.next_cursor}, HTTP_HX_REQUEST="true"
    )

    # Two stretches of 5 rows: the second ends the history, so it offers no third, empty one.
    assert [row.pk for row in last.context["page"].rows] == [match.pk]
    assert last.context["page"].next_cursor is None
    assert "Nothing here yet" not in last.text


def query_plan(sql: str) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT TEXT) {sql}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def page_query(client, query) -> str:
    """The SQL of the query that reads the images a history fragment shows (the last one: a
    search first finds where its stretch of rows ends)."""
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("history"), query, HTTP_HX_REQUEST="true").status_code == 200
    return [q["sql"] for q in queries if "ORDER BY" in q["sql"] and "generator_generatedimage" in q["sql"]][
        -1
    ]


def cursor_at(owner, depth):
    row = GeneratedImage.objects.filter(owner=owner).order_by("-created_at", "-pk")[depth - 1]
    return history.cursor_of(row.created_at, row.pk)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's query plan; PostgreSQL has its own test")
def test_sqlite_finds_a_deep_page_by_a_range_of_the_owner_index(client):
    from .bulk import fill_history

    owner = fill_history(users=3, images_for_first=400)[0]
    client.force_login(owner)

    plan = query_plan(page_query(client, {"cursor": cursor_at(owner, 300)}))

    # A range of the index that starts at the cursor, not a walk from the newest row that
    # drops the 300 newer ones; SQLite finds the range in the cursor's OR as in a row value.
    assert re.search(r"USING INDEX image_owner_created_id \(owner_id=\? AND \(?created_at", plan), plan
    assert "TEMP B-TREE" not in plan, plan  # the index gives the order: no sort


def rows_read_by_the_index(plan: str) -> int:
    found = re.search(r"Index Scan using image_owner_created_id .*?actual time=\S+ rows=(\d+)", plan)
    assert found, plan
    return int(found.group(1))


@pytest.mark.postgres
def test_postgresql_finds_a_deep_page_by_an_index_condition_on_the_row_value(client, settings):
    if connection.vendor != "postgresql":
        pytest.skip("DATABASE_URL does not name PostgreSQL; CI runs this in its PostgreSQL pass.")
    from .bulk import fill_history

    owner = fill_history(users=3, images_for_first=20_000, images_for_others=4_000)[0]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    client.force_login(owner)

    plan = query_plan(page_query(client, {"cursor": cursor_at(owner, 16_000)}))

    assert "Index Scan using image_owner_created_id" in plan, plan
    assert "Index Cond: ((owner_id = " in plan, plan
    assert "(ROW(created_at, id) < ROW(" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan  # the 16,000 newer rows are never read
    assert rows_read_by_the_index(plan) == history.PAGE_SIZE + 1, plan
    assert "Sort" not in plan, plan

    # A search reads the next HISTORY_SCAN_ROWS rows at most: the row values bound an index
    # range. "number 12" is in none of the 500 images after this cursor, and in 400 before them.
    # (Stretches of 500: a quarter of this small table would cost as much as all its prompts.)
    settings.HISTORY_SCAN_ROWS = 500
    search = query_plan(page_query(client, {"q": "number 12", "cursor": cursor_at(owner, 8_000)}))
    assert "ROW(created_at, id) >= ROW(" in search, search
    assert rows_read_by_the_index(search) <= settings.HISTORY_SCAN_ROWS, search

    # The trigram index serves what Django writes for a search: the planner's way to a rare
    # term (with 6,000 prompts reading them all costs as little, so the test forbids that).
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
    rare = str(Prompt.objects.filter(positive_text__icontains="number 1234 ").explain())
    assert "Bitmap Index Scan on prompt_text_trgm" in rare, rare


# -- totals ---------------------------------------------------------------------------------


def recount(user):
    images = GeneratedImage.objects.filter(owner=user)
    return {
        "images": images.count(),
        "bytes": sum(images.values_list("bytes", flat=True)),
        "favourites": images.filter(is_favourite=True).count(),
    }


def test_totals_match_a_recount_after_every_kind_of_change(client, user, other_user, staff_user):
    client.force_login(user)
    assert user_totals(user.pk) == {"images": 0, "bytes": 0, "favourites": 0}
    made = [GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=1000 + n) for n in range(6)]
    GeneratedImageFactory(prompt=PromptFactory(owner=other_user), bytes=5)
    prompt = PromptFactory(owner=user)
    changes = {
        "bulk_create": lambda: GeneratedImage.objects.bulk_create(
            [
                GeneratedImage(prompt=prompt, owner=user, node_id="9", output_index=i, bytes=7)
                for i in range(5)
            ]
        ),
        "favourite toggled": lambda: client.post(reverse("image-favourite", args=[made[0].pk])),
        "saved unchanged": lambda: GeneratedImage.objects.get(pk=made[1].pk).save(),
        "bulk favourite": lambda: client.post(
            reverse("history-bulk"), {"action": "favourite", "images": [m.pk for m in made[:4]]}
        ),
        "moderator rejects": lambda: GeneratedImage.objects.filter(pk=made[2].pk).update(
            review_status=GeneratedImage.Review.REJECTED, reviewed_by=staff_user
        ),
        "bytes corrected": lambda: GeneratedImage.objects.filter(pk=made[3].pk).update(bytes=99),
        "delete one": lambda: client.post(reverse("image-delete", args=[made[0].pk])),
        "bulk delete": lambda: client.post(
            reverse("history-bulk"), {"action": "delete", "images": [m.pk for m in made[1:3]]}
        ),
        "prompt deleted with its images": lambda: prompt.delete(),
        "given to another user": lambda: GeneratedImage.objects.filter(pk=made[4].pk).update(
            owner=other_user
        ),
    }
    for change, apply in changes.items():
        apply()
        assert user_totals(user.pk) == recount(user), change
        assert user_totals(other_user.pk) == recount(other_user), change

    page = client.get(reverse("history"))
    assert f"{recount(user)['images']} image" in page.text


def test_the_first_page_after_a_new_image_counts_it_without_summing_the_rows(user_client, user):
    GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=2048)
    user_client.get(reverse("history"))
    GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=2048)

    with CaptureQueriesContext(connection) as queries:
        page = user_client.get(reverse("history"))

    assert "2 images · 4.0\xa0KB stored" in page.text
    assert not [q for q in queries if "SUM(" in q["sql"].upper() or "COUNT(" in q["sql"].upper()]


def test_lost_triggers_are_made_again_and_the_totals_recounted(user):
    """SQLite drops a table's triggers when Django rebuilds it for a schema change: the check
    after every migrate puts them back and recounts what they missed meanwhile."""
    GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=10)
    with connection.cursor() as cursor:
        for name in ("generator_image_totals_insert", "generator_image_totals_delete"):
            on_table = " ON generator_generatedimage" if connection.vendor == "postgresql" else ""
            cursor.execute(f"DROP TRIGGER {name}{on_table}")
    GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=10)  # not counted
    assert user_totals(user.pk)["images"] == 1

    assert install_totals_triggers(connection) is True
    assert user_totals(user.pk) == recount(user) == {"images": 2, "bytes": 20, "favourites": 0}
    assert install_totals_triggers(connection) is False  # nothing missing: nothing recounted
    GeneratedImageFactory(prompt=PromptFactory(owner=user), bytes=10)
    assert user_totals(user.pk)["images"] == 3
