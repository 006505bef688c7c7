"""factory_boy factories for the generator models."""

from __future__ import annotations

import copy
import datetime
import io

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from generator.models import Backend, GeneratedImage, Prompt

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class PromptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prompt

    owner = factory.SubFactory(UserFactory)
    workflow = "txt2img"
    positive_text = factory.Sequence(lambda n: f"a lighthouse at dusk, variation {n}")
    negative_text = "blurry"
    params = factory.LazyFunction(lambda: {"seed": 42, "steps": 20, "cfg": 7.0})


def png_bytes(
    size: tuple[int, int] = (64, 48), *, prompt_chunk: str = '{"3": {"class_type": "KSampler"}}'
) -> bytes:
    """A real PNG with the `prompt` and `workflow` text chunks ComfyUI writes."""
    image = Image.new("RGB", size, (200, 120, 40))
    info = PngInfo()
    info.add_text("prompt", prompt_chunk)
    info.add_text("workflow", '{"nodes": []}')
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


class GeneratedImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = GeneratedImage

    prompt = factory.SubFactory(PromptFactory)
    file = factory.django.FileField(filename="ComfyUI_00001_.png", data=png_bytes())
    thumbnail = factory.django.ImageField(filename="thumb.webp", format="WEBP", width=32, height=24)
    width = 64
    height = 48
    bytes = 1000
    node_id = "9"
    output_index = factory.Sequence(int)


def backend(url: str, *, online: bool = True, driven: bool = True, message: str = "", **fields) -> Backend:
    """A backend row as a bridge keeps it: just reported, and (`driven`) leased by a bridge process."""
    lease = {}
    if driven:
        until = timezone.now() + datetime.timedelta(seconds=10)
        lease = {"lease_owner": "host:1:abc", "lease_expires_at": until}
    return Backend.objects.create(
        url=url, online=online, status_message=message, checked_at=timezone.now(), **lease, **fields
    )


def backend_with_models(*checkpoints: str) -> Backend:
    """A driven backend whose ComfyUI has these checkpoints, and every core node."""
    from generator.backends import bundled_object_info

    info = copy.deepcopy(bundled_object_info())
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(checkpoints)
    return backend("http://gpu:8188", object_info=info, node_classes=sorted(info))
