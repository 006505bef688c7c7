"""The account page for scripts: API keys (made, listed, revoked) and the webhook secret."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .api.keys import create_key, revoke_key
from .http import AuthenticatedRequest
from .models import ApiKey, WebhookDelivery
from .webhooks import rotate_secret, secret_for

RECENT_DELIVERIES = 20


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What the key is for, e.g. “notebook” or “Discord bot”.", strip=True
    )


def api_keys(request: AuthenticatedRequest) -> HttpResponse:
    """GET lists the keys; POST makes one and shows it this once (it is kept only as a hash)."""
    form = ApiKeyForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        _, new_key = create_key(request.user, form.cleaned_data["name"])
        form = ApiKeyForm()
    context = {
        "form": form,
        "new_key": new_key,
        "keys": ApiKey.objects.filter(owner=request.user),
        "webhook_secret": secret_for(request.user),
        "deliveries": WebhookDelivery.objects.filter(owner=request.user)[:RECENT_DELIVERIES],
    }
    return render(request, "generator/api_keys.html", context)


@require_POST
def revoke(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=pk, owner=request.user)
    revoke_key(key)
    messages.success(request, f"Revoked the key “{key.name}”. Scripts using it now get 401.")
    return redirect("api-keys")


@require_POST
def new_webhook_secret(request: AuthenticatedRequest) -> HttpResponse:
    rotate_secret(request.user)
    messages.success(request, "Made a new webhook secret; deliveries from now on are signed with it.")
    return redirect("api-keys")
