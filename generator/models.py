"""Prompts (one request to generate) and the images they produce."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class IllegalTransition(ValueError):
    """A status change the job state machine does not allow."""


def source_image_path(instance: Prompt, filename: str) -> str:
    # Unguessable names: media is private, but a name must not leak anything either.
    return f"inputs/{instance.owner_id}/{uuid.uuid4().hex}-{filename}"


def output_image_path(instance: GeneratedImage, filename: str) -> str:
    return f"outputs/{instance.owner_id}/{uuid.uuid4().hex}-{filename}"


def thumbnail_path(instance: GeneratedImage, filename: str) -> str:
    return f"thumbnails/{instance.owner_id}/{uuid.uuid4().hex}-{filename}"


def new_installation_key() -> uuid.UUID:
    return uuid.uuid4()


class Installation(models.Model):
    """This site's identity toward the ComfyUI servers it shares with others (staging and
    production, a developer's checkout, a test run): made once, kept in the database, so every
    web and bridge process of the installation uses the same one, across restarts. It names the
    bridges' websockets, tags each job in ComfyUI's queue and names the images uploaded there,
    so that a bridge only ever deletes, interrupts or settles jobs this installation queued."""

    key = models.UUIDField(default=new_installation_key, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"Installation {self.key}"

    @classmethod
    def current(cls) -> Installation:
        """The one row (pk 1), made by whichever process asks first; a race makes it once."""
        row, _ = cls.objects.get_or_create(pk=1)
        return row

    @classmethod
    def renew(cls) -> Installation:
        """A new identity: for a database copied from another installation (production's, restored
        for staging), which would otherwise take the other's jobs in ComfyUI for its own."""
        cls.objects.filter(pk=1).delete()
        return cls.objects.create(pk=1)


class Backend(models.Model):
    """A ComfyUI server as the bridge last saw it. Pages read it; only the bridge writes it."""

    url = models.CharField(max_length=200, unique=True)
    label = models.CharField(max_length=100, blank=True)
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Relative capacity: jobs go where (jobs in it ÷ weight) is lowest."
    )
    is_demo = models.BooleanField(default=False, help_text="The built-in emulator, not a real ComfyUI.")
    online = models.BooleanField(default=False)
    status_message = models.CharField(max_length=300, blank=True)
    offline_since = models.DateTimeField(null=True, blank=True)
    # Which bridge process drives this backend, until when: one websocket owner at a time.
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    system_stats = models.JSONField(default=dict, blank=True)
    # Only the node classes our workflows use, plus every node class name: enough for forms
    # and availability checks without loading ComfyUI's multi-megabyte /object_info per page.
    object_info = models.JSONField(default=dict, blank=True)
    node_classes = models.JSONField(default=list, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["label", "url"]

    def __str__(self) -> str:
        return self.label or self.url


class StepRate(models.Model):
    """How fast one backend runs one workflow at one size, as measured on the jobs it finished:
    what the job cards' time estimates are made of. Written by the bridge after each job."""

    backend = models.CharField(max_length=200)
    workflow = models.CharField(max_length=100)
    size = models.CharField(max_length=32, blank=True, help_text="width×height, when the job has one")
    # Exponentially weighted, so a backend that got faster (or busier) shows within a few jobs.
    seconds_per_step = models.FloatField(default=0.0)
    seconds_before_steps = models.FloatField(default=0.0, help_text="loading, encoding")
    seconds_after_steps = models.FloatField(default=0.0, help_text="decoding, saving")
    steps = models.FloatField(default=0.0, help_text="sampler steps a job of it took")
    jobs = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backend", "workflow", "size"], name="steprate_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow} {self.size} on {self.backend}: {self.seconds_per_step:.3f} s/step"


class Quota(models.Model):
    """Limits for the members of a group; a user in several groups gets the most generous.

    Empty values mean "no limit"; users in no group with a quota get the site defaults
    (settings.DEFAULT_QUOTA).
    """

    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="quota")
    max_queued = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs waiting at once.")
    max_running = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs on a GPU at once.")
    max_images_per_day = models.PositiveIntegerField(null=True, blank=True, help_text="Images in 24 hours.")

    class Meta:
        ordering = ["group__name"]

    def __str__(self) -> str:
        return f"Quota of {self.group}"


class Prompt(models.Model):
    """One request to generate, and the job that carries it out on a ComfyUI backend."""

    class Via(models.TextChoices):
        WEB = "web", "Web page"
        API = "api", "API"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SUBMITTED = "submitted", "Waiting in ComfyUI"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # The state machine: every status a job may move to from each status. Submitted and
    # running jobs may go back to queued when their backend lost them and they are resubmitted.
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        Status.QUEUED: frozenset({Status.SUBMITTED, Status.FAILED, Status.CANCELLED}),
        Status.SUBMITTED: frozenset(
            {Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
        ),
        Status.RUNNING: frozenset({Status.QUEUED, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
        Status.SUCCEEDED: frozenset(),
        Status.FAILED: frozenset(),
        Status.CANCELLED: frozenset(),
    }
    FINAL_STATUSES: ClassVar[frozenset[str]] = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
    # Handed to a backend: waiting in ComfyUI's queue or running there.
    ON_BACKEND_STATUSES: ClassVar[frozenset[str]] = frozenset({Status.SUBMITTED, Status.RUNNING})
    # Queued or handed to a backend, as a list: the partial index below names it, and a query
    # uses that index only when it filters with the very same terms.
    UNFINISHED_STATUSES: ClassVar[list[str]] = [Status.QUEUED, Status.SUBMITTED, Status.RUNNING]

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompts")
    workflow = models.CharField(max_length=100)
    positive_text = models.TextField("prompt", blank=True)
    negative_text = models.TextField("negative prompt", blank=True)
    params = models.JSONField("parameters", default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, editable=False)
    comfy_prompt_id = models.UUIDField(
        "ComfyUI prompt id", null=True, blank=True, unique=True, editable=False
    )
    backend = models.CharField(max_length=200, blank=True, editable=False)
    progress = models.FloatField(default=0.0, editable=False, help_text="0 to 1")
    error = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    submit_attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    on_demo_backend = models.BooleanField(default=False, editable=False)
    source_image = models.ImageField(upload_to=source_image_path, blank=True)
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    via = models.CharField(max_length=8, choices=Via.choices, default=Via.WEB, editable=False)
    webhook_url = models.URLField(max_length=2000, blank=True, editable=False)
    # An API client's Idempotency-Key: the same key within IDEMPOTENCY_SECONDS gives this job
    # again instead of a second one. `request_digest` tells a replay from a different request.
    idempotency_key = models.CharField(max_length=255, blank=True, editable=False)
    request_digest = models.CharField(max_length=64, blank=True, editable=False)
    # The job's round in the fair queue (see generator.scheduling): queued jobs go to ComfyUI
    # by (turn, created_at, id). Set when the job is queued.
    turn = models.IntegerField(default=0, editable=False)
    # The queue place its owner's tabs were last told (None: never): each move is told once,
    # by whichever bridge sees it first (see generator.jobs.moved_queue_places).
    told_place = models.PositiveIntegerField(null=True, blank=True, editable=False)
    # With it, the estimate in the words its tabs were last told ("about 40 s"; "": none).
    told_estimate = models.CharField(max_length=40, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            # Keyset pages (history, GET /api/jobs) read `(created_at, id) < (cursor)` newest
            # first: with `id` in the index the whole cursor is an index condition, not a filter.
            models.Index(fields=["owner", "-created_at", "-id"], name="prompt_owner_created_id"),
            models.Index(
                fields=["owner", "status", "-created_at", "-id"], name="prompt_owner_status_created"
            ),
            models.Index(fields=["status", "created_at"], name="prompt_status_created"),
            # The fair order itself: the next job, and a job's place, read from its first rows.
            # `status` leads so SQLite, which has no statistics, prefers it to
            # prompt_status_created (it did, and sorted the whole queue at each claim).
            models.Index(
                fields=["status", "turn", "created_at", "id"],
                condition=models.Q(status="queued"),
                name="prompt_queue_order",
            ),
            # A user's last turn, when they queue another job.
            models.Index(
                fields=["owner", "turn"],
                condition=models.Q(status__in=["queued", "submitted", "running"]),
                name="prompt_owner_unfinished_turn",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="prompt_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        text = self.positive_text if len(self.positive_text) <= 60 else self.positive_text[:57] + "…"
        return f"#{self.pk} {text or self.workflow} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and self.status == self.Status.QUEUED and self.owner_id is not None:
            from .scheduling import next_turn  # scheduling reads this model

            self.turn = next_turn(self.owner_id)
        super().save(*args, **kwargs)

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES

    def can_transition_to(self, status: str) -> bool:
        return status in self.TRANSITIONS[self.status]

    def transition_to(self, status: str, **changes: Any) -> None:
        """Move to `status`, stamping times, and save. Raises IllegalTransition otherwise.

        `changes` are other fields set in the same save (error text, backend, ids...). The
        update only applies if the row still has the status we read, so two processes racing
        (a user cancelling while the bridge submits) cannot both win.
        """
        if not self.can_transition_to(status):
            raise IllegalTransition(f"Prompt {self.pk}: {self.status} → {status} is not allowed")
        previous = self.status
        now = timezone.now()
        fields: dict[str, Any] = {"status": status}
        if status == self.Status.RUNNING and self.started_at is None:
            fields["started_at"] = now
        if status == self.Status.QUEUED:
            fields.update(
                comfy_prompt_id=None,
                backend="",
                progress=0.0,
                started_at=None,
                told_place=None,
                told_estimate="",
            )
        if status in self.FINAL_STATUSES:
            fields["finished_at"] = now
            if status == self.Status.SUCCEEDED:
                fields["progress"] = 1.0
        fields.update(changes)
        if self.pk is None:
            raise ValueError("save the prompt before moving it through its states")
        row = type(self).objects.filter(pk=self.pk, status=previous)
        if status in self.FINAL_STATUSES and self.webhook_url:
            # In the same transaction as the move: a job that ended always has its delivery.
            with transaction.atomic():
                updated = row.update(**fields)
                if updated:
                    WebhookDelivery.objects.create(
                        prompt=self, owner_id=self.owner_id, url=self.webhook_url, event=f"job.{status}"
                    )
        else:
            updated = row.update(**fields)
        if not updated:
            self.refresh_from_db(fields=["status"])
            raise IllegalTransition(
                f"Prompt {self.pk} changed to {self.status} meanwhile; {previous} → {status} refused"
            )
        for name, value in fields.items():
            setattr(self, name, value)


class GeneratedImage(models.Model):
    """One output file of a prompt, stored byte for byte as ComfyUI produced it."""

    class Review(models.TextChoices):
        PENDING = "pending", "Pending review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="images")
    # Copied from the prompt so that a user's gallery is one indexed query on this table.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="images", editable=False
    )
    file = models.FileField(upload_to=output_image_path)
    content_type = models.CharField(max_length=100, default="image/png")
    thumbnail = models.ImageField(upload_to=thumbnail_path, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    bytes = models.PositiveBigIntegerField(default=0)
    node_id = models.CharField("ComfyUI node id", max_length=64)
    output_index = models.PositiveIntegerField(default=0)
    is_favourite = models.BooleanField("favourite", default=False)
    review_status = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "node_id", "output_index"], name="image_unique_output"),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at", "-id"], name="image_owner_created_id"),
            models.Index(fields=["review_status", "-created_at"], name="image_review_created"),
            models.Index(
                fields=["owner", "-created_at", "-id"],
                condition=models.Q(is_favourite=True),
                name="image_owner_fav_created_id",
            ),
        ]

    def __str__(self) -> str:
        return f"Image {self.pk} of prompt {self.prompt_id} (node {self.node_id} #{self.output_index})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.owner_id is None and self.prompt_id is not None:
            self.owner_id = self.prompt.owner_id
        super().save(*args, **kwargs)


class ImageTotals(models.Model):
    """A user's image count, bytes stored and favourites, for the history page's heading.

    Kept by database triggers on GeneratedImage (migration 0008), in the same transaction as
    the change: every way rows change (a save, `bulk_create`, `QuerySet.update`, a cascade,
    the admin) counts, which signals would miss. Summing 100,000 rows on each page took 25 ms.
    Read only; a user with no row has no images yet.
    """

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    images = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    favourites = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "image totals"

    def __str__(self) -> str:
        return f"{self.images} images of user {self.owner_id}"


class ApiKey(models.Model):
    """A key a user's scripts present as `Authorization: Bearer <key>`. Only a hash is kept:
    the key is shown once, when it is made. `prefix` finds the row; the hash is compared in
    constant time."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="apikey_owner_created")]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class WebhookSecret(models.Model):
    """The key a user's webhook deliveries are signed with (HMAC-SHA256). Kept readable: the
    site must sign with it, and its owner must be able to see it to verify."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret"
    )
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["owner_id"]

    def __str__(self) -> str:
        return f"Webhook secret of {self.owner}"


class WebhookDelivery(models.Model):
    """One event to POST to a job's webhook URL, retried with backoff until it is taken or
    WEBHOOK_RETRY_HOURS pass. In the database, so a restart loses no delivery."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Gave up"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="webhook_deliveries")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    url = models.URLField(max_length=2000)
    event = models.CharField(max_length=32)
    # Written at the first attempt and sent unchanged at every retry.
    payload = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="webhook_due"),
            models.Index(fields=["owner", "-created_at"], name="webhook_owner_created"),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} of job {self.prompt_id} to {self.url} ({self.status})"

    @property
    def message_id(self) -> str:
        return f"msg_{self.pk}"
