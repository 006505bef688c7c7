"""Per-user totals for the history page (images, bytes stored, favourites), kept as they change.

Summing a user's 100,000 image rows took 25–55 ms, so the first page after any new image paid
for it. Instead database triggers on the image table add and subtract, in the transaction that
changes the rows: a save, `bulk_create`, `QuerySet.update`, a cascade or the admin all count,
where Django's signals would miss the bulk ones and a counter kept by hand would drift.

The triggers are installed by migration 0008 and checked after every `migrate`: on SQLite
Django rebuilds a table for some schema changes, which drops its triggers. Whenever they had to
be (re)made, the totals are recounted from the rows.
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from .models import GeneratedImage, ImageTotals

IMAGES = GeneratedImage._meta.db_table
TOTALS = ImageTotals._meta.db_table
TRIGGER_NAMES = (
    "generator_image_totals_insert",
    "generator_image_totals_delete",
    "generator_image_totals_update",
)

# What one image row adds to its owner's totals; subtracting is the same with OLD and minus.
_CHANGED = (
    "OLD.owner_id IS DISTINCT FROM NEW.owner_id OR OLD.bytes IS DISTINCT FROM NEW.bytes"
    " OR OLD.is_favourite IS DISTINCT FROM NEW.is_favourite"
)


def _add(row: str, favourite: str) -> str:
    return (
        f"INSERT INTO {TOTALS} (owner_id, images, bytes, favourites)"
        f" VALUES ({row}.owner_id, 1, {row}.bytes, {favourite})"
        f" ON CONFLICT (owner_id) DO UPDATE SET images = {TOTALS}.images + 1,"
        f" bytes = {TOTALS}.bytes + excluded.bytes, favourites = {TOTALS}.favourites + excluded.favourites;"
    )


def _subtract(row: str, favourite: str) -> str:
    return (
        f"UPDATE {TOTALS} SET images = images - 1, bytes = bytes - {row}.bytes,"
        f" favourites = favourites - {favourite} WHERE owner_id = {row}.owner_id;"
    )


def _sqlite_triggers() -> list[str]:
    insert, delete, update = TRIGGER_NAMES
    add, subtract = _add("NEW", "NEW.is_favourite"), _subtract("OLD", "OLD.is_favourite")
    changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
    return [
        f"CREATE TRIGGER IF NOT EXISTS {insert} AFTER INSERT ON {IMAGES} BEGIN {add} END",
        f"CREATE TRIGGER IF NOT EXISTS {delete} AFTER DELETE ON {IMAGES} BEGIN {subtract} END",
        f"CREATE TRIGGER IF NOT EXISTS {update} AFTER UPDATE OF owner_id, bytes, is_favourite"
        f" ON {IMAGES} WHEN {changed} BEGIN {subtract} {add} END",
    ]


def _postgresql_triggers() -> list[str]:
    insert, delete, update = TRIGGER_NAMES
    add, subtract = _add("NEW", "NEW.is_favourite::int"), _subtract("OLD", "OLD.is_favourite::int")
    function = f"""
        CREATE OR REPLACE FUNCTION generator_count_image() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'UPDATE') THEN {subtract} END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN {add} END IF;
            RETURN NULL;
        END $$"""
    each_row = "FOR EACH ROW EXECUTE FUNCTION generator_count_image()"
    return [
        function,
        f"CREATE OR REPLACE TRIGGER {insert} AFTER INSERT ON {IMAGES} {each_row}",
        f"CREATE OR REPLACE TRIGGER {delete} AFTER DELETE ON {IMAGES} {each_row}",
        f"CREATE OR REPLACE TRIGGER {update} AFTER UPDATE OF owner_id, bytes, is_favourite ON {IMAGES}"
        f" FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION generator_count_image()",
    ]


def _installed_triggers(connection: BaseDatabaseWrapper) -> int:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)", [list(TRIGGER_NAMES)])
        else:
            marks = ", ".join(["%s"] * len(TRIGGER_NAMES))
            cursor.execute(
                f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
                TRIGGER_NAMES,
            )
        return cursor.fetchone()[0]


def recount_totals(connection: BaseDatabaseWrapper) -> None:
    """Every user's totals from their rows (the triggers keep them from then on)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # no image may change between the two statements
            cursor.execute(f"LOCK TABLE {IMAGES} IN SHARE MODE")
        cursor.execute(f"DELETE FROM {TOTALS}")
        cursor.execute(
            f"INSERT INTO {TOTALS} (owner_id, images, bytes, favourites)"
            " SELECT owner_id, COUNT(*), COALESCE(SUM(bytes), 0),"
            " SUM(CASE WHEN is_favourite THEN 1 ELSE 0 END)"
            f" FROM {IMAGES} GROUP BY owner_id"
        )


def install_totals_triggers(connection: BaseDatabaseWrapper) -> bool:
    """Make the triggers if any is missing, then recount; whether they were missing."""
    if connection.vendor not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"Image totals need triggers written for {connection.vendor}.")
    if _installed_triggers(connection) == len(TRIGGER_NAMES):
        return False
    statements = _postgresql_triggers() if connection.vendor == "postgresql" else _sqlite_triggers()
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    recount_totals(connection)
    return True


@receiver(post_migrate)
def _keep_triggers(sender: Any, using: str = "default", plan: Any = None, **kwargs: Any) -> None:
    connection = connections[using]
    if getattr(sender, "name", "") == "generator" and TOTALS in connection.introspection.table_names():
        install_totals_triggers(connection)


def user_totals(user_id: int) -> dict[str, int]:
    """The user's image count, bytes and favourites: one row read by its key."""
    row = ImageTotals.objects.filter(owner_id=user_id).first()
    if row is None:  # no image yet
        return {"images": 0, "bytes": 0, "favourites": 0}
    return {"images": row.images, "bytes": row.bytes, "favourites": row.favourites}
