"""Django's Redis cache, riding out Redis restarts.

Everything the site keeps in the cache can be done without for a moment: sessions are in the
database too (cached_db), user totals and queue places are worked out again, live job states
are refreshed by the next event, and throttles and socket counts are generous limits. So while
Redis is unreachable (restarting, failing over), a read is a miss and a write is skipped, with
a warning in the log, instead of an exception: it made every page a 500 and stopped the bridge
from storing finished images (a cache entry is forgotten when an image is saved).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 10.0  # one warning per outage, not one per request


class ResilientRedisCache(RedisCache):
    _warned_at = -WARN_EVERY_SECONDS

    @contextlib.contextmanager
    def _unless_unreachable(self, operation: str) -> Iterator[None]:
        """Swallow Redis being unreachable; the caller returns what a miss returns."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as error:
            now = time.monotonic()
            if now - ResilientRedisCache._warned_at >= WARN_EVERY_SECONDS:
                ResilientRedisCache._warned_at = now
                logger.warning("Cache unavailable (%s on %s); going on without it", error, operation)

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        with self._unless_unreachable("get"):
            return super().get(key, default, version)
        return default

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        with self._unless_unreachable("get_many"):
            return super().get_many(keys, version)
        return {}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        with self._unless_unreachable("has_key"):
            return super().has_key(key, version)
        return False

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        with self._unless_unreachable("set"):
            super().set(key, value, timeout, version)

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        with self._unless_unreachable("set_many"):
            return super().set_many(data, timeout, version)
        return list(data)  # the keys not set

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        with self._unless_unreachable("add"):
            return super().add(key, value, timeout, version)
        return False

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        with self._unless_unreachable("touch"):
            return super().touch(key, timeout, version)
        return False

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        with self._unless_unreachable("incr"):
            return super().incr(key, delta, version)
        raise ValueError(f"Key {key!r} not found: the cache is unavailable")  # what a missing key raises

    def delete(self, key: Any, version: int | None = None) -> bool:
        with self._unless_unreachable("delete"):
            return super().delete(key, version)
        return False

    def delete_many(self, keys: Any, version: int | None = None) -> None:
        with self._unless_unreachable("delete_many"):
            super().delete_many(keys, version)

    def clear(self) -> None:
        with self._unless_unreachable("clear"):
            super().clear()
