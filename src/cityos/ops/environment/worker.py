"""The environment worker: recomputes stations when their readings change, frugally.

It listens on `hub.entity.changed` for AirQualityObserved, WaterQualityObserved and
NoiseLevelObserved entities. Readings may arrive at thousands per second, so:

- a change only marks its station; a station already queued is not queued twice (coalescing);
- a station is recomputed at most once per `CITYOS_ENV_INTERVAL` seconds of clock time (60),
  or earlier when its clock hour has rolled over since the last run; a change inside that
  window is deferred to its due time, not dropped;
- the queue is bounded (`CITYOS_ENV_QUEUE`); when it is full the station is deferred and retried
  (`dropped` counts how often), so a burst never grows memory without bound;
- one background task does the work, off the ingest path.

The write-back of the indices raises `hub.entity.changed` again: a change that touched only the
attributes this domain writes is ignored, so there is no loop.

District AQIs are republished after an air station's AQI changed, at most once per interval per
tenant. The throttle state is per process (a cache: any process may recompute any station); the
incident episodes are in the database (see `models.episodes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from cityos.core import clock
from cityos.core.errors import ResourceNotFound
from cityos.core.events import Event
from cityos.core.tasks import StepGuard
from cityos.hub.service import Change
from cityos.ops.environment.service import AIR, HOUR, EnvironmentService

log = logging.getLogger("cityos.ops.environment")

Key = tuple[str, str]  # (tenant, entity id)


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class EnvironmentWorker:
    def __init__(self, service: EnvironmentService, poll_seconds: float = 1.0) -> None:
        self.service = service
        self.interval = timedelta(seconds=service.settings.interval_seconds)
        self.poll_seconds = poll_seconds
        self.queue: asyncio.Queue[Key] = asyncio.Queue(maxsize=max(1, service.settings.queue_size))
        self.queued: set[Key] = set()
        self.deferred: dict[Key, datetime] = {}
        self.last: dict[Key, datetime] = {}
        self.district_dirty: set[str] = set()
        self.district_last: dict[str, datetime] = {}
        self.dropped = 0
        self.processed = 0
        self.failed = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._steps = StepGuard("environment indices")

    # ------------------------------------------------------------------ intake (on the publisher's path: cheap)

    async def on_change(self, event: Event) -> None:
        # Idempotent without a claim: the effect is a recompute of the station from stored readings,
        # queued once per station (a redelivered change finds the key queued, deferred or fresh).
        change = event.payload.get("change")
        if not isinstance(change, Change) or change.after is None:
            return
        if not any(t in self.service.type_iris for t in change.after.types):
            return
        if self.service.settings.stations != "all" and self.service.ref_device_iri not in change.after.attrs:
            return  # not a monitoring station (see EnvironmentSettings.stations)
        if change.changed_attrs and change.changed_attrs <= self.service.output_iris:
            return  # our own write-back
        self.offer((str(event.payload.get("tenant", "")), change.entity_id))

    def due(self, key: Key) -> datetime | None:
        """When `key` may run again: interval after its last run, or its next clock hour if sooner."""
        last = self.last.get(key)
        if last is None:
            return None
        return min(last + self.interval, _hour_floor(last) + HOUR)

    def offer(self, key: Key) -> None:
        if key in self.queued:
            return
        due = self.due(key)
        if due is not None and clock.now() < due:
            if key not in self.deferred or due < self.deferred[key]:
                self.deferred[key] = due
            return
        self._enqueue(key)

    def _enqueue(self, key: Key) -> bool:
        try:
            self.queue.put_nowait(key)
        except asyncio.QueueFull:
            self.dropped += 1
            self.deferred.setdefault(key, clock.now())
            return False
        self.queued.add(key)
        self.deferred.pop(key, None)
        self._wake.set()
        return True

    def promote(self) -> None:
        """Queue the deferred stations that are due, the longest waiting first."""
        now = clock.now()
        # Only the due ones are sorted: a city's stations are mostly waiting out their interval.
        ready = sorted(((due, key) for key, due in self.deferred.items() if due <= now))
        for _, key in ready:
            if key in self.queued:
                self.deferred.pop(key, None)
            elif not self._enqueue(key):
                break

    # ------------------------------------------------------------------ work

    async def _process(self, key: Key) -> None:
        self.queued.discard(key)
        self.last[key] = clock.now()
        tenant, entity_id = key
        try:
            result = await self.service.recompute(tenant, entity_id)
        except ResourceNotFound:
            return
        except Exception:  # one bad station must not stop the others
            self.failed += 1
            log.exception("environment recompute of %s failed", entity_id)
            return
        self.processed += 1
        if not result.values:
            # Nothing to compute yet (a station just provisioned): the throttle waits for data, not for this.
            self.last.pop(key, None)
            if key in self.deferred:
                self.deferred[key] = clock.now()
            return
        if result.kind == AIR and "aqi" in result.written:
            self.district_dirty.add(tenant)

    async def _districts(self) -> None:
        now = clock.now()
        for tenant in sorted(self.district_dirty):
            last = self.district_last.get(tenant)
            if last is not None and now < min(last + self.interval, _hour_floor(last) + HOUR):
                continue
            self.district_dirty.discard(tenant)
            self.district_last[tenant] = now
            try:
                await self.service.publish_districts(tenant)
            except Exception:
                self.failed += 1
                log.exception("district AQI of tenant %r failed", tenant)

    async def _work(self) -> None:
        async with self._lock:
            while True:
                if self.queue.empty():
                    # Once per emptied queue, not per station: promoting walks every deferred station.
                    self.promote()
                    if self.queue.empty():
                        break
                await self._process(self.queue.get_nowait())
            await self._districts()

    async def drain(self) -> None:
        """Process everything that is due now (used by tests and at shutdown)."""
        await self._work()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            self._wake.clear()
            await self._steps.step(self._work())

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="cityos-environment")

    async def stop(self) -> None:
        await self._steps.stop([self._task])
        self._task = None

    def reset(self) -> None:
        """Forget the throttle state (tests that reuse station ids with a moved clock)."""
        self.last.clear()
        self.deferred.clear()
        self.district_last.clear()
        self.district_dirty.clear()

    def stats(self) -> dict[str, int]:
        return {"queued": self.queue.qsize(), "deferred": len(self.deferred), "processed": self.processed,
                "dropped": self.dropped, "failed": self.failed}
