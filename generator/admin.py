from django.contrib import admin

from .models import GeneratedImage, Prompt


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    fields = ("file", "width", "height", "bytes", "node_id", "output_index", "review_status")
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "workflow", "short_text", "status", "backend", "created_at", "finished_at")
    list_filter = ("status", "workflow", "backend", "created_at")
    search_fields = ("positive_text", "negative_text", "owner__username")
    list_select_related = ("owner",)
    raw_id_fields = ("owner", "parent")
    readonly_fields = (
        "status",
        "comfy_prompt_id",
        "backend",
        "progress",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    )
    date_hierarchy = "created_at"
    inlines = [GeneratedImageInline]

    @admin.display(description="prompt")
    def short_text(self, obj: Prompt) -> str:
        return obj.positive_text[:80]


@admin.register(GeneratedImage)
class GeneratedImageAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "prompt", "width", "height", "review_status", "created_at")
    list_filter = ("review_status", "created_at")
    search_fields = ("prompt__positive_text", "owner__username")
    list_select_related = ("owner", "prompt")
    raw_id_fields = ("prompt", "reviewed_by")
    readonly_fields = ("owner", "created_at")
