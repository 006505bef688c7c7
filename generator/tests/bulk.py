"""Filling the database fast for tests and benchmarks at scale."""

from __future__ import annotations

import datetime

from django.contrib.auth import get_user_model
from django.utils import timezone

from generator.models import GeneratedImage, Prompt


def fill_history(
    *, users: int, images_for_first: int, images_per_prompt: int = 4, thumbnail_name: str = ""
) -> list:
    """`users` users; the first owns `images_for_first` images (in prompts of `images_per_prompt`)."""
    User = get_user_model()
    people = User.objects.bulk_create(
        [User(username=f"bulk{n}", email=f"bulk{n}@example.com") for n in range(users)]
    )
    owner = people[0]
    start = timezone.now() - datetime.timedelta(days=365)
    prompt_count = images_for_first // images_per_prompt
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                owner=owner,
                workflow="txt2img",
                positive_text=f"prompt number {n} of a long history",
                params={"seed": n},
                status=Prompt.Status.SUCCEEDED,
                created_at=start + datetime.timedelta(minutes=n),
            )
            for n in range(prompt_count)
        ],
        batch_size=2000,
    )
    GeneratedImage.objects.bulk_create(
        [
            GeneratedImage(
                prompt=prompt,
                owner=owner,
                file=f"outputs/{owner.pk}/{prompt.pk}-{index}.png",
                thumbnail=thumbnail_name,
                width=512,
                height=512,
                bytes=400_000,
                node_id="9",
                output_index=index,
                created_at=prompt.created_at,
            )
            for prompt in prompts
            for index in range(images_per_prompt)
        ],
        batch_size=2000,
    )
    return people
