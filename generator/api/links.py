"""Short-lived signed links to private images, for API clients that asked for URLs.

The link carries the image id and the time it was signed, under the site's secret key; the view
checks the signature and age, then that the image is still one its owner may see (a rejected
image's old links stop working), and sends it as the media views do.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from generator.history import visible_images
from generator.models import GeneratedImage
from generator.views import private_file

_signer = signing.TimestampSigner(salt="generator.api.image-link")


def signed_image_path(image_id: int) -> tuple[str, datetime.datetime]:
    """The link's path, and when it stops working."""
    token = _signer.sign(str(image_id))
    expires_at = timezone.now() + datetime.timedelta(seconds=settings.API_LINK_SECONDS)
    return reverse("image-link", args=[token]), expires_at


@login_not_required
@require_GET
def image_by_link(request: HttpRequest, token: str) -> HttpResponse:
    try:
        image_id = int(_signer.unsign(token, max_age=settings.API_LINK_SECONDS))
    except (signing.BadSignature, ValueError):
        raise Http404("This link is invalid or has expired.") from None
    image = GeneratedImage.objects.select_related("owner").filter(pk=image_id).first()
    if image is None or not visible_images(image.owner).filter(pk=image.pk).exists():
        raise Http404("This image is no longer available.")
    response = private_file(image.file, image.content_type)
    response["Cache-Control"] = "private, no-store"
    return response
