"""Staff review: every image with its owner and prompt, bulk approve/reject, prompts with retries."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from .models import ApiKey, Backend, GeneratedImage, Prompt, Quota, WebhookDelivery


def _staff(request: HttpRequest) -> User:
    """The admin's user: always a logged-in staff member."""
    assert isinstance(request.user, User)
    return request.user


def _thumbnail(image: GeneratedImage, size: int = 96) -> str:
    return format_html(
        '<a href="{}" target="_blank"><img src="{}" alt="" width="{}" style="border-radius:6px"></a>',
        reverse("image-file", args=[image.pk]),
        reverse("image-thumbnail", args=[image.pk]),
        size,
    )


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    fields = ("preview", "width", "height", "bytes", "node_id", "output_index", "review_status")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    @admin.display(description="image")
    def preview(self, obj: GeneratedImage) -> str:
        return _thumbnail(obj)

    def has_add_permission(self, request: HttpRequest, obj: Prompt | None = None) -> bool:
        return False


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "workflow", "short_text", "status", "backend", "created_at", "finished_at")
    list_filter = ("status", "workflow", "via", "backend", "created_at")
    search_fields = ("positive_text", "negative_text", "owner__username")
    list_select_related = ("owner",)
    raw_id_fields = ("owner", "parent")
    readonly_fields = (
        "owner",
        "workflow",
        "positive_text",
        "negative_text",
        "params",
        "status",
        "comfy_prompt_id",
        "backend",
        "progress",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
        "submit_attempts",
        "on_demo_backend",
        "source_image",
        "parent",
        "via",
        "webhook_url",
        "idempotency_key",
    )
    date_hierarchy = "created_at"
    inlines = [GeneratedImageInline]
    actions = ["retry_failed"]

    @admin.display(description="prompt")
    def short_text(self, obj: Prompt) -> str:
        return obj.positive_text[:80]

    @admin.action(description="Retry the selected failed prompts")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Prompt]) -> None:
        retried = 0
        for prompt in queryset.filter(status=Prompt.Status.FAILED):
            Prompt.objects.create(
                owner=prompt.owner,
                workflow=prompt.workflow,
                positive_text=prompt.positive_text,
                negative_text=prompt.negative_text,
                params=prompt.params,
                source_image=prompt.source_image,
                parent=prompt.parent,
            )
            retried += 1
        skipped = queryset.count() - retried
        self.message_user(request, f"Queued {retried} prompt(s) again.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Skipped {skipped} that had not failed.", messages.WARNING)


@admin.register(GeneratedImage)
class GeneratedImageAdmin(admin.ModelAdmin):
    list_display = ("thumb", "id", "owner", "prompt_text", "workflow", "review_status", "created_at")
    list_display_links = ("thumb", "id")
    list_filter = (
        "review_status",
        ("owner", admin.RelatedOnlyFieldListFilter),
        "prompt__workflow",
        "created_at",
    )
    search_fields = ("prompt__positive_text", "owner__username")
    list_select_related = ("owner", "prompt")
    list_per_page = 50
    date_hierarchy = "created_at"
    actions = ["approve", "reject"]
    fields = (
        "full_image",
        "owner",
        "prompt_link",
        "prompt_text",
        "negative_text",
        "parameters",
        "workflow",
        "width",
        "height",
        "bytes",
        "content_type",
        "node_id",
        "output_index",
        "is_favourite",
        "review_status",
        "reviewed_by",
        "reviewed_at",
        "created_at",
    )
    readonly_fields = tuple(f for f in fields if f != "review_status")

    @admin.display(description="image")
    def thumb(self, obj: GeneratedImage) -> str:
        return _thumbnail(obj, 72)

    @admin.display(description="image")
    def full_image(self, obj: GeneratedImage) -> str:
        return format_html(
            '<img src="{}" alt="" style="max-width:min(100%,768px);height:auto;border-radius:8px">',
            reverse("image-file", args=[obj.pk]),
        )

    @admin.display(description="prompt", ordering="prompt__positive_text")
    def prompt_text(self, obj: GeneratedImage) -> str:
        return obj.prompt.positive_text

    @admin.display(description="negative prompt")
    def negative_text(self, obj: GeneratedImage) -> str:
        return obj.prompt.negative_text

    @admin.display(description="parameters")
    def parameters(self, obj: GeneratedImage) -> str:
        return ", ".join(f"{k}: {v}" for k, v in obj.prompt.params.items())

    @admin.display(description="workflow", ordering="prompt__workflow")
    def workflow(self, obj: GeneratedImage) -> str:
        return obj.prompt.workflow

    @admin.display(description="job")
    def prompt_link(self, obj: GeneratedImage) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:generator_prompt_change", args=[obj.prompt_id]), obj.prompt
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: GeneratedImage, form: Any, change: bool) -> None:
        if change and "review_status" in form.changed_data:
            obj.reviewed_by, obj.reviewed_at = _staff(request), timezone.now()
        super().save_model(request, obj, form, change)

    def _review(self, request: HttpRequest, queryset: QuerySet[GeneratedImage], status: str) -> None:
        count = queryset.update(review_status=status, reviewed_by=_staff(request), reviewed_at=timezone.now())
        self.message_user(request, f"{count} image(s) marked {GeneratedImage.Review(status).label.lower()}.")

    @admin.action(description="Approve the selected images")
    def approve(self, request: HttpRequest, queryset: QuerySet[GeneratedImage]) -> None:
        self._review(request, queryset, GeneratedImage.Review.APPROVED)

    @admin.action(description="Reject the selected images (hidden from their owners)")
    def reject(self, request: HttpRequest, queryset: QuerySet[GeneratedImage]) -> None:
        self._review(request, queryset, GeneratedImage.Review.REJECTED)


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = (
        "url",
        "label",
        "weight",
        "online",
        "is_demo",
        "lease_owner",
        "status_message",
        "checked_at",
    )
    list_filter = ("online", "is_demo")
    readonly_fields = (
        "online",
        "status_message",
        "offline_since",
        "lease_owner",
        "lease_expires_at",
        "system_stats",
        "node_classes",
        "object_info",
        "checked_at",
    )


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ("group", "max_queued", "max_running", "max_images_per_day")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Staff see every user's keys (never the keys themselves: only hashes are kept) and may
    revoke them."""

    list_display = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at", "created_at")
    search_fields = ("name", "prefix", "owner__username")
    list_select_related = ("owner",)
    fields = ("owner", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("owner", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key is made by its owner, who alone sees it once

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "prompt",
        "owner",
        "event",
        "url",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
    )
    list_filter = ("status", "event", "created_at")
    search_fields = ("url", "owner__username")
    list_select_related = ("owner", "prompt")
    readonly_fields = (
        "prompt",
        "owner",
        "url",
        "event",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    )
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send again now")
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = queryset.update(status=WebhookDelivery.Status.PENDING, next_attempt_at=timezone.now())
        self.message_user(request, f"{count} delivery(ies) will be sent again.", messages.SUCCESS)
