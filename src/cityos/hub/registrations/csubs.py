"""Context Source registration subscriptions (§5.11) and their notifications (§5.11.7, §5.3.2).

A csource subscription has the shape of an entity subscription (the hub's subscription parser checks
it), plus `csf` and `temporalQ`, and is matched against registrations: when a registration starts
to match (`newlyMatching`), changes while matching (`updated`) or stops matching
(`noLongerMatching`), a notification carrying the registration, cut down to its matching
RegistrationInfo elements, is posted to the endpoint through the guarded outbound client. One
task per endpoint keeps the notifications to an endpoint in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.core.outbound import Outbound, OutboundError
from cityos.hub import geoquery, typesel
from cityos.hub.jsonld import CORE_CONTEXT_URL, ActiveContext, ContextResolver
from cityos.hub.model import check_entity_id
from cityos.hub.registrations.match import Filter, Selector, parse_expr, parse_temporal
from cityos.hub.registrations.models import csource_subscriptions
from cityos.hub.registrations.service import Stored
from cityos.hub.registrations.spec import render_registration
from cityos.hub.subscriptions import spec as sub_spec

log = logging.getLogger("cityos.hub.csource")
Spec = dict[str, Any]
JSON = "application/json"
JSON_LD = "application/ld+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
UNREACHABLE = "the endpoint could not be reached or did not answer in time"


# ---------------------------------------------------------------------- documents


def _temporal_q(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("temporalQ must be an object")
    parse_temporal(value.get("timerel"), value.get("timeAt"), value.get("endTimeAt"), value.get("timeproperty"))
    return {k: value[k] for k in ("timerel", "timeAt", "endTimeAt", "timeproperty") if k in value}


def parse_members(body: Any, ctx: ActiveContext, *, allow_null: bool = False) -> Spec:
    members = sub_spec.parse_members(body, ctx, allow_null=allow_null)
    members.pop("notificationTrigger", None)
    if "watchedAttributes" in body and body["watchedAttributes"] == []:
        raise BadRequestData("watchedAttributes must be a non-empty array")
    for key in ("csf", "temporalQ"):
        if key not in body:
            continue
        if body[key] is None and allow_null:
            members[key] = None
        elif key == "csf":
            parse_expr(body[key], "csf")
            members[key] = body[key]
        else:
            members[key] = _temporal_q(body[key])
    return members


def parse_csub(body: Any, ctx: ActiveContext) -> Spec:
    spec = parse_members(body, ctx)
    raw_id = body.get("id")
    spec["id"] = check_entity_id(raw_id) if raw_id is not None else sub_spec.new_id()
    spec["type"] = "Subscription"
    sub_spec.check_whole(spec)
    return spec


def filter_of(spec: Spec, ctx: ActiveContext) -> Filter:
    selectors = []
    for s in spec.get("entities") or []:
        # A type selection (§4.17): a registration names one type per EntityInfo, so any type it
        # mentions may hold matching entities (a conjunction cannot be told apart there).
        types = frozenset(typesel.all_types(sub_spec.selector_types(s)))
        selectors.append(Selector(types=types, ids=frozenset([s["id"]]) if "id" in s else None,
                                  pattern=re.compile(s["idPattern"]) if "idPattern" in s else None))
    geo = None
    if "geoQ" in spec:
        g = spec["geoQ"]
        geoproperty = g.get("geoproperty") or "location"
        short = geoproperty.rsplit("/", 1)[-1] if geoproperty.startswith("https://uri.etsi.org/") else geoproperty
        geo = geoquery.parse_geoquery(g["georel"], g["geometry"], g["coordinates"], short, lambda n: n)
    temporal = None
    if "temporalQ" in spec:
        t = spec["temporalQ"]
        temporal = parse_temporal(t.get("timerel"), t.get("timeAt"), t.get("endTimeAt"), t.get("timeproperty"))
    watched = spec.get("watchedAttributes")
    return Filter(selectors=selectors, attrs=frozenset(watched) if watched else None,
                  q=parse_expr(spec["q"]["text"], "q") if "q" in spec else None,
                  csf=parse_expr(spec.get("csf"), "csf"), geo=geo, temporal=temporal, expand=ctx.expand)


def render_csub(spec: Spec, row: Any, compact: Callable[[str], str], sys_attrs: bool) -> dict[str, Any]:
    out = sub_spec.render_subscription(spec, row, compact, clock.now())
    out.pop("notificationTrigger", None)
    notification = out["notification"]
    for key in ("timesSent", "timesFailed"):
        if not notification.get(key):
            notification.pop(key, None)  # counters appear once there is something to count
    for key in ("csf", "temporalQ"):
        if key in spec:
            out[key] = spec[key]
    if not sys_attrs:
        out.pop("createdAt", None)
        out.pop("modifiedAt", None)
    return out


# ---------------------------------------------------------------------- service


@dataclass
class Live:
    tenant: str
    spec: Spec
    context: Any
    expires_at: datetime | None


class CsubService:
    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock, resolver: ContextResolver,
                 outbound: Outbound, timeout: float = 5.0,
                 registrations: Callable[[str], Awaitable[list[Stored]]] | None = None) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self.resolver = resolver
        self.outbound = outbound
        self.timeout = timeout
        self.registrations = registrations
        self._endpoint_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ CRUD

    async def create(self, tenant: str, body: Any, ctx: ActiveContext) -> str:
        spec = parse_csub(body, ctx)
        filter_of(spec, ctx)
        now = clock.now()
        expires = clock.parse_iso(spec["expiresAt"]) if "expiresAt" in spec else None
        interval = spec.get("timeInterval")
        async with write_transaction(self.engine, self.write_lock) as conn:
            found = await conn.execute(select(csource_subscriptions.c.id).where(
                csource_subscriptions.c.tenant == tenant, csource_subscriptions.c.id == spec["id"]))
            if found.first() is not None:
                raise AlreadyExists(f"subscription {spec['id']} already exists")
            await conn.execute(insert(csource_subscriptions).values(
                tenant=tenant, id=spec["id"], spec=spec, context=ctx.source, expires_at=expires,
                time_interval=interval, next_periodic_at=(now + timedelta(seconds=interval)) if interval else None,
                created_at=now, modified_at=now, status="ok", times_sent=0, times_failed=0))
        # Initial notification (§5.11.7): the registrations matching now, if any.
        if self.registrations is not None and spec.get("isActive", True):
            stored = await self.registrations(tenant)
            self._notify(Live(tenant, spec, ctx.source, expires), [(s, "newlyMatching") for s in stored],
                         ctx=ctx, check=True, periodic="timeInterval" in spec)
        return str(spec["id"])

    async def _row(self, tenant: str, sub_id: str) -> Row[Any]:
        check_entity_id(sub_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(csource_subscriptions).where(
                csource_subscriptions.c.tenant == tenant, csource_subscriptions.c.id == sub_id))).first()
        if row is None:
            raise ResourceNotFound(f"subscription {sub_id} not found")
        return row

    async def retrieve(self, tenant: str, sub_id: str, compact: Callable[[str], str],
                       sys_attrs: bool) -> dict[str, Any]:
        row = await self._row(tenant, sub_id)
        return render_csub(dict(row.spec), row, compact, sys_attrs)

    async def query(self, tenant: str, compact: Callable[[str], str], limit: int, offset: int,
                    sys_attrs: bool) -> tuple[list[dict[str, Any]], int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(csource_subscriptions).where(csource_subscriptions.c.tenant == tenant)
                                       .order_by(csource_subscriptions.c.created_at, csource_subscriptions.c.id)))
            all_rows = rows.all()
        page = all_rows[offset:offset + limit]
        return [render_csub(dict(r.spec), r, compact, sys_attrs) for r in page], len(all_rows)

    async def update(self, tenant: str, sub_id: str, body: Any, ctx: ActiveContext) -> None:
        row = await self._row(tenant, sub_id)
        members = parse_members(body, ctx, allow_null=True)
        spec = sub_spec.apply_update(dict(row.spec), body, members)
        filter_of(spec, ctx)
        now = clock.now()
        expires = clock.parse_iso(spec["expiresAt"]) if "expiresAt" in spec else None
        interval = spec.get("timeInterval")
        async with write_transaction(self.engine, self.write_lock) as conn:
            await conn.execute(update(csource_subscriptions).where(
                csource_subscriptions.c.tenant == tenant, csource_subscriptions.c.id == sub_id).values(
                spec=spec, context=ctx.source if ctx.source is not None else row.context, expires_at=expires,
                time_interval=interval,
                next_periodic_at=(now + timedelta(seconds=interval)) if interval else None, modified_at=now))
        # A changed subscription is told the registrations it matches now, as on creation (§5.11.3).
        if self.registrations is not None and spec.get("isActive", True) and (expires is None or expires > now):
            ctx_now = await self.resolver.resolve(ctx.source if ctx.source is not None else row.context)
            stored = await self.registrations(tenant)
            self._notify(Live(tenant, spec, ctx_now.source, expires), [(s, "newlyMatching") for s in stored],
                         ctx=ctx_now, check=True)

    async def delete(self, tenant: str, sub_id: str) -> None:
        await self._row(tenant, sub_id)
        async with write_transaction(self.engine, self.write_lock) as conn:
            await conn.execute(delete(csource_subscriptions).where(
                csource_subscriptions.c.tenant == tenant, csource_subscriptions.c.id == sub_id))

    # ------------------------------------------------------------------ matching

    async def _live(self, tenant: str) -> list[Live]:
        now = clock.now()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(csource_subscriptions).where(
                csource_subscriptions.c.tenant == tenant))).all()
        live = []
        for r in rows:
            expires = as_utc_or_none(r.expires_at)
            if r.spec.get("isActive", True) and (expires is None or expires > now):
                live.append(Live(tenant, dict(r.spec), r.context, expires))
        return live

    async def registration_changed(self, tenant: str, before: Stored | None, after: Stored | None) -> None:
        """A registration listener: tell the subscriptions it newly matches, still matches or no longer matches."""
        for sub in await self._live(tenant):
            if "timeInterval" in sub.spec:
                continue  # periodic subscriptions report on their own schedule
            try:
                ctx = await self.resolver.resolve(sub.context, may_fetch=True)
            except Exception:
                log.warning("csource subscription %s: its @context cannot be resolved", sub.spec["id"])
                continue
            flt = filter_of(sub.spec, ctx)
            was = before is not None and flt.matches(before.spec, before.created_at, before.modified_at)
            now_ = after is not None and flt.matches(after.spec, after.created_at, after.modified_at)
            if now_:
                assert after is not None
                self._notify(sub, [(after, "updated" if was else "newlyMatching")], ctx=ctx, flt=flt)
            elif was:
                assert before is not None
                self._notify(sub, [(before, "noLongerMatching")], ctx=ctx, flt=flt)

    def _notify(self, sub: Live, items: list[tuple[Stored, str]], *, ctx: ActiveContext,
                flt: Filter | None = None, check: bool = False, periodic: bool = False) -> None:
        """Queue one notification per trigger reason (the spec's triggerReason is per notification).
        A periodic subscription is notified at each interval, with an empty `data` when nothing matches."""
        flt = flt or filter_of(sub.spec, ctx)
        by_reason: dict[str, list[dict[str, Any]]] = {}
        for stored, reason in items:
            if check and not flt.matches(stored.spec, stored.created_at, stored.modified_at):
                continue
            infos = flt.infos(stored.spec) or stored.spec["information"]
            by_reason.setdefault(reason, []).append(
                render_registration(stored.spec, ctx.compact, information=infos))
        if periodic and not by_reason:
            by_reason["newlyMatching"] = []
        for reason, data in by_reason.items():
            task = asyncio.create_task(self._send(sub, ctx, data, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, sub: Live, ctx: ActiveContext, data: list[dict[str, Any]], reason: str) -> None:
        endpoint = sub.spec["notification"]["endpoint"]
        uri = endpoint["uri"]
        accept = endpoint.get("accept", JSON)
        body: dict[str, Any] = {"id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}", "type": "ContextSourceNotification",
                                "subscriptionId": sub.spec["id"], "notifiedAt": clock.iso(clock.now()),
                                "data": data, "triggerReason": reason}
        headers = {"Content-Type": accept}
        if accept == JSON_LD:
            body["@context"] = ctx.source if ctx.source is not None else CORE_CONTEXT_URL
        else:
            link = ctx.source if isinstance(ctx.source, str) else CORE_CONTEXT_URL
            headers["Link"] = f'<{link}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'
        if sub.tenant:
            headers["NGSILD-Tenant"] = sub.tenant
        for pair in endpoint.get("receiverInfo", []):
            headers[pair["key"]] = pair["value"]
        lock = self._endpoint_locks.setdefault(uri, asyncio.Lock())
        async with lock:
            error: str | None = None
            try:
                if not uri.startswith(("http://", "https://")):
                    raise OutboundError("only http(s) endpoints take csource notifications")
                async with self.outbound.client(timeout=self.timeout, connections=1) as client:
                    response = await client.request("POST", uri, content=orjson.dumps(body), headers=headers,
                                                    max_bytes=64 * 1024, truncate=True)
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status} from the endpoint"
            except OutboundError as exc:
                log.warning("csource notification to %s: %s", uri[:120], exc.reason)
                error = UNREACHABLE
            await self._record(sub, error)

    async def _record(self, sub: Live, error: str | None) -> None:
        now = clock.now()
        values: dict[str, Any] = {"last_notification": now, "times_sent": csource_subscriptions.c.times_sent + 1}
        if error is None:
            values.update(last_success=now, status="ok")
        else:
            values.update(last_failure=now, status="failed", last_error_reason=error,
                          times_failed=csource_subscriptions.c.times_failed + 1)
        with contextlib.suppress(Exception):
            async with write_transaction(self.engine, self.write_lock) as conn:
                await conn.execute(update(csource_subscriptions).where(
                    csource_subscriptions.c.tenant == sub.tenant,
                    csource_subscriptions.c.id == sub.spec["id"]).values(**values))

    # ------------------------------------------------------------------ periodic

    async def periodic_round(self) -> None:
        """Send the periodic (timeInterval) subscriptions that are due."""
        now = clock.now()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(csource_subscriptions).where(
                csource_subscriptions.c.next_periodic_at.is_not(None),
                csource_subscriptions.c.next_periodic_at <= now))).all()
        for row in rows:
            interval = float(row.time_interval or 0)
            async with write_transaction(self.engine, self.write_lock) as conn:
                await conn.execute(update(csource_subscriptions).where(
                    csource_subscriptions.c.tenant == row.tenant, csource_subscriptions.c.id == row.id).values(
                    next_periodic_at=now + timedelta(seconds=max(interval, 1.0))))
            spec = dict(row.spec)
            expires = as_utc_or_none(row.expires_at)
            if not spec.get("isActive", True) or (expires is not None and expires <= now):
                continue
            if self.registrations is None:
                continue
            try:
                ctx = await self.resolver.resolve(row.context, may_fetch=True)
            except Exception:
                log.warning("csource subscription %s: its @context cannot be resolved", spec.get("id"))
                continue
            stored = await self.registrations(row.tenant)
            self._notify(Live(row.tenant, spec, row.context, expires), [(s, "newlyMatching") for s in stored],
                         ctx=ctx, check=True, periodic=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
