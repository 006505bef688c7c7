"""Filling the database fast for tests and benchmarks at scale."""

from __future__ import annotations

import datetime

from django.contrib.auth import get_user_model
from django.utils import timezone

from generator.models import GeneratedImage, Prompt

# Prompts name one subject each in turn, so a search may match an eighth of them ("forest"),
# one ("number 1234 "), all ("history") or none ("zebra").
SUBJECTS = ["lighthouse", "forest", "harbour", "mountain", "city", "garden", "desert", "river"]


def _prompts(owner: object, count: int, start: datetime.datetime) -> list[Prompt]:
    return Prompt.objects.bulk_create(
        [
            Prompt(
                owner=owner,
                workflow="txt2img",
                positive_text=f"a {SUBJECTS[n % len(SUBJECTS)]}, prompt number {n} of a long history",
                params={"seed": n},
                status=Prompt.Status.SUCCEEDED,
                created_at=start + datetime.timedelta(minutes=n),
            )
            for n in range(count)
        ],
        batch_size=2000,
    )


def _images(prompts: list[Prompt], per_prompt: int, thumbnail_name: str) -> None:
    GeneratedImage.objects.bulk_create(
        [
            GeneratedImage(
                prompt=prompt,
                owner_id=prompt.owner_id,
                file=f"outputs/{prompt.owner_id}/{prompt.pk}-{index}.png",
                thumbnail=thumbnail_name,
                width=512,
                height=512,
                bytes=400_000,
                node_id="9",
                output_index=index,
                created_at=prompt.created_at,
            )
            for prompt in prompts
            for index in range(per_prompt)
        ],
        batch_size=2000,
    )


def fill_history(
    *,
    users: int,
    images_for_first: int,
    images_per_prompt: int = 4,
    thumbnail_name: str = "",
    images_for_others: int = 0,
) -> list:
    """`users` users; the first owns `images_for_first` images (in prompts of `images_per_prompt`,
    which share their prompt's time: ties for the cursor); the others share `images_for_others`."""
    User = get_user_model()
    people = User.objects.bulk_create(
        [User(username=f"bulk{n}", email=f"bulk{n}@example.com") for n in range(users)]
    )
    start = timezone.now() - datetime.timedelta(days=365)
    _images(
        _prompts(people[0], images_for_first // images_per_prompt, start), images_per_prompt, thumbnail_name
    )
    others = people[1:]
    for person in others if images_for_others else []:
        count = images_for_others // len(others) // images_per_prompt
        _images(_prompts(person, count, start), images_per_prompt, thumbnail_name)
    return people


def seed_browser_history(images: int = 90) -> None:
    """Users for the history browser test: `ada` with `images` pictures, staff `root`."""
    import io

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image

    from generator.tests.factories import PASSWORD, png_bytes

    User = get_user_model()
    ada = User.objects.create_user("ada", "ada@example.com", PASSWORD)
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    file_name = default_storage.save("outputs/seed.png", ContentFile(png_bytes((256, 256))))
    thumbs = []
    for hue in range(6):
        out = io.BytesIO()
        Image.new("RGB", (192, 192), ((hue * 40) % 256, 120, 255 - hue * 30)).save(out, "WEBP")
        thumbs.append(default_storage.save(f"thumbnails/seed{hue}.webp", ContentFile(out.getvalue())))
    start = timezone.now() - datetime.timedelta(days=3)
    for n in range(images):
        subject = "lighthouse" if n % 3 == 0 else "forest"
        prompt = Prompt.objects.create(
            owner=ada,
            workflow="txt2img",
            positive_text=f"a {subject} painting number {n}",
            params={"seed": n, "steps": 20},
            status=Prompt.Status.SUCCEEDED,
            created_at=start + datetime.timedelta(minutes=n),
        )
        GeneratedImage.objects.create(
            prompt=prompt,
            owner=ada,
            file=file_name,
            thumbnail=thumbs[n % len(thumbs)],
            width=256,
            height=256,
            bytes=len(png_bytes((256, 256))),
            node_id="9",
            output_index=0,
            created_at=prompt.created_at,
        )
