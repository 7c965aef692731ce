"""服务找人 and 免申即享: records and new policies trigger re-evaluation; newly eligible people are
told (unless they opted out) or paid.

- A department record commits together with the re-evaluation of its subject: new decisions,
  payout records and in-app notices (through the notifier of services/notify, in the same
  transaction) — one commit, so a crash leaves either all of it or none.
- A payout is unique per (subject, policy, period): a retried or concurrent run inserts nothing
  (INSERT … ON CONFLICT DO NOTHING on both databases) and notifies nobody a second time.
- A payout waits out an objection window; above the approval threshold it also waits for a
  supervisor; `settle` pays what is due. Every payout step is in the audit chain (same transaction).
- A one-click confirmation of a 服务找人 notice becomes a pre-filled application: the form is made
  from the profile the government already holds and handed to the services domain on the event bus
  (``livelihood.application.requested``), never through its tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float
from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.events import Event, EventBus
from cityos.core.messages import city_zone
from cityos.livelihood import models as m
from cityos.livelihood.policies.engine import Population, evaluate, explain, population_of
from cityos.livelihood.policies.rules import Policy, PolicyError, check_catalogue, load_catalogue, parse_policy
from cityos.livelihood.profiles.fields import DERIVED
from cityos.livelihood.profiles.service import Fact, ProfileStore, parse_record
from cityos.security.audit import AuditEvent, AuditLog
from cityos.security.crypto import KeyRing
from cityos.security.policy import Principal

APPLICATION_TOPIC = "livelihood.application.requested"
# The services domain's answers to a pre-filled application (its usual change event, or a refusal).
APPLICATION_CHANGED = "services.application.changed"
APPLICATION_REFUSED = "services.prefill.refused"
PROFILE_TOPIC = "livelihood.profile.changed"
PAYOUT_TOPIC = "livelihood.payout.changed"
Check = Callable[[str, Any], Awaitable[None]]


@dataclass(frozen=True)
class ProactiveSettings:
    objection_days: float = field(default_factory=lambda: env_float("CITYOS_LIVELIHOOD_OBJECTION_DAYS", 1.0))
    approval_threshold: float = field(
        default_factory=lambda: env_float("CITYOS_LIVELIHOOD_APPROVAL_THRESHOLD", 50_000.0))


def insert_ignore(conn: AsyncConnection, table: Any, values: dict[str, Any]) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(**values).on_conflict_do_nothing()


def local_day(at: datetime) -> date:
    return at.astimezone(city_zone()).date()


class ProactiveService:
    def __init__(self, engine: AsyncEngine, keyring: KeyRing, audit: AuditLog, bus: EventBus | None = None,
                 notifier: Any = None, write_lock: asyncio.Lock | None = None,
                 settings: ProactiveSettings | None = None) -> None:
        self.engine = engine
        self.store = ProfileStore(keyring)
        self.audit = audit
        self.bus = bus
        self.notifier = notifier
        self.settings = settings or ProactiveSettings()
        self._lock = write_lock or asyncio.Lock()
        self._shipped = load_catalogue()
        self._catalogues: dict[str, tuple[tuple[Any, ...], list[Policy]]] = {}

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn

    # ------------------------------------------------------------------ policies

    async def catalogue(self, tenant: str) -> list[Policy]:
        """The shipped policies overlaid with the tenant's versions. Cached per tenant and re-read when the
        tenant's version rows change (another process may have written one)."""
        async with self.engine.connect() as conn:
            stamp = tuple((await conn.execute(select(func.count(), func.max(m.policies.c.created_at)).where(
                m.policies.c.tenant == tenant))).one())
            found = self._catalogues.get(tenant)
            if found is not None and found[0] == stamp:
                return found[1]
            rows = (await conn.execute(select(m.policies).where(m.policies.c.tenant == tenant)
                                       .order_by(m.policies.c.id, m.policies.c.version))).all()
        by_id = {p.id: p for p in self._shipped}
        for row in rows:  # the newest version of an id wins
            by_id[row.id] = parse_policy(row.doc)
        ordered = check_catalogue(list(by_id.values()))
        self._catalogues[tenant] = (stamp, ordered)
        return ordered

    async def policy(self, tenant: str, policy_id: str) -> Policy:
        for policy in await self.catalogue(tenant):
            if policy.id == policy_id:
                return policy
        raise ResourceNotFound(f"no policy {policy_id!r}")

    async def put_policy(self, principal: Principal, tenant: str, policy_id: str, doc: Any) -> dict[str, Any]:
        """A new version of a policy (or a new policy); refused when invalid or when it makes a cycle."""
        if not isinstance(doc, dict):
            raise BadRequestData("a policy is a JSON object")
        current = await self.catalogue(tenant)
        old = next((p for p in current if p.id == policy_id), None)
        version = (old.version + 1) if old else 1
        doc = {**doc, "id": policy_id, "version": version}
        try:
            policy = parse_policy(doc)
            check_catalogue([p for p in current if p.id != policy_id] + [policy])
        except PolicyError as exc:
            raise BadRequestData(str(exc)) from exc
        async with self.write() as conn:
            await conn.execute(m.policies.insert().values(tenant=tenant, id=policy_id, version=version, doc=doc,
                                                          created_by=principal.username or principal.id,
                                                          created_at=clock.now()))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.policy.manage",
                                                            f"policy:{policy_id}", tenant=tenant, version=version)])
        sweep = await self.sweep(tenant, [policy_id])
        return {"policy": policy_view(policy), "sweep": sweep}

    # ------------------------------------------------------------------ records → re-evaluation

    async def publish(self, principal: Principal | None, tenant: str, body: Any, check: Check) -> dict[str, Any]:
        rec = parse_record(body)
        await check("livelihood.record.publish", rec["department"])
        async with self.write() as conn:
            result = await self.store.publish(conn, tenant, rec)
            outcome = await self._reevaluate(conn, tenant, result.subject_id, rec["kind"], rec["observed_at"])
            await self.audit.append_in(conn, [AuditEvent.of(
                principal, "livelihood.record.publish", f"record:{result.record_id}", tenant=tenant,
                department=rec["department"], dataset=rec["dataset"], fields=sorted(rec["fields"]),
                flags=len(result.flags))])
        await self._after_commit(tenant, outcome)
        if self.bus is not None and result.changed:
            await self.bus.publish(PROFILE_TOPIC, {"tenant": tenant, "subject": result.subject_id,
                                                   "kind": result.kind, "fields": result.changed})
        return {"record": result.record_id, "subject": result.subject_id, "created": result.created,
                "changed": result.changed, "flags": result.flags, **outcome.summary()}

    async def _subject_population(self, conn: AsyncConnection, tenant: str, subject_id: str, kind: str,
                                  on: date) -> tuple[dict[str, Population], dict[str, Fact]]:
        facts = await self.store.facts(conn, tenant, subject_id)
        purposes = {p for f in facts.values() for p in f.purposes}
        pops = {purpose: population_of(kind, [{k: f.value for k, f in facts.items() if purpose in f.purposes}], on)
                for purpose in purposes}
        return pops, facts

    async def _reevaluate(self, conn: AsyncConnection, tenant: str, subject_id: str, kind: str,
                          event_at: datetime, only: list[str] | None = None) -> Outcome:
        now = clock.now()
        on = local_day(now)
        catalogue = [p for p in await self.catalogue(tenant) if p.audience == kind]
        pops, facts = await self._subject_population(conn, tenant, subject_id, kind, on)
        done = evaluate(catalogue, pops)
        subject = await self.store.subject(conn, tenant, subject_id)
        outcome = Outcome()
        # One read of what is already decided: an ineligible policy without a decision costs nothing.
        held = {(r.policy_id, r.period) for r in (await conn.execute(select(
            m.decisions.c.policy_id, m.decisions.c.period).where(
            m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject_id,
            m.decisions.c.eligible.is_(True)))).all()}
        opted_out = (await conn.execute(select(m.optouts.c.at).where(
            m.optouts.c.tenant == tenant, m.optouts.c.subject_id == subject_id))).first() is not None
        for policy in catalogue:
            if only is not None and policy.id not in only:
                continue
            mask = done.get(policy.id)
            eligible = bool(mask is not None and mask[0])
            period = policy.period_key(on)
            if eligible == ((policy.id, period) in held):
                continue  # nothing new: still eligible (decided before) or still not eligible
            pop = pops.get(policy.purpose)
            why = self._why(policy, pop, done, facts) if pop is not None else []
            await self._decide(conn, tenant, subject, policy, eligible, why, event_at, now, outcome, opted_out)
        return outcome

    @staticmethod
    def _why(policy: Policy, pop: Population, done: dict[str, Any], facts: dict[str, Fact]) -> list[dict[str, Any]]:
        out = explain(policy, pop, 0, done)
        for item in out:
            fact = facts.get(item.get("source", ""))
            if fact is not None:
                item["department"] = fact.department
                item["record"] = fact.record_id
                item["observedAt"] = fact.observed_at.isoformat()
        return out

    async def _decide(self, conn: AsyncConnection, tenant: str, subject: Any, policy: Policy, eligible: bool,
                      why: list[dict[str, Any]], event_at: datetime, now: datetime, outcome: Outcome,
                      opted_out: bool) -> None:
        period = policy.period_key(local_day(now))
        key = and_(m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                   m.decisions.c.policy_id == policy.id, m.decisions.c.period == period)
        if not eligible:
            # Only a decision that exists is turned off (no row per person and ineligible policy).
            await conn.execute(m.decisions.update().where(key, m.decisions.c.eligible.is_(True))
                               .values(eligible=False, status="lapsed", explanation=why, evaluated_at=now))
            return
        status = "granted" if policy.mode == "automatic" else ("opted-out" if opted_out else "notified")
        values = {"tenant": tenant, "subject_id": subject.id, "policy_id": policy.id, "period": period,
                  "policy_version": policy.version, "eligible": True, "explanation": why, "status": status,
                  "event_at": event_at, "evaluated_at": now, "notified_at": None, "confirmed_at": None,
                  "application": None}
        fresh = (await conn.execute(insert_ignore(conn, m.decisions, values))).rowcount == 1
        if not fresh:
            # Compare-and-set: only the run that turns a lapsed decision back on acts on it.
            fresh = (await conn.execute(m.decisions.update().where(key, m.decisions.c.eligible.is_(False)).values(
                eligible=True, status=status, explanation=why, event_at=event_at, evaluated_at=now,
                policy_version=policy.version))).rowcount == 1
        if not fresh:
            return
        outcome.eligible.append(policy.id)
        if policy.mode == "automatic" and policy.amount > 0:
            await self._grant(conn, tenant, subject.id, policy, period, event_at, now, outcome)
        if status == "opted-out" or (opted_out and policy.mode == "automatic"):
            outcome.opted_out.append(policy.id)
            return
        if subject.user_id and self.notifier is not None:
            subject_line, body, link = notice_text(policy)
            sent = await self.notifier.notify(tenant, subject.user_id, subject_line, body, link=link, conn=conn)
            await conn.execute(m.decisions.update().where(key).values(notified_at=now))
            outcome.notified.append(policy.id)
            outcome.deliveries = outcome.deliveries or bool(sent.get("deliveries"))

    async def _grant(self, conn: AsyncConnection, tenant: str, subject_id: str, policy: Policy, period: str,
                     event_at: datetime, now: datetime, outcome: Outcome) -> None:
        payout_id = uuid.uuid4().hex
        needs_approval = policy.amount > self.settings.approval_threshold
        values = {"id": payout_id, "tenant": tenant, "subject_id": subject_id, "policy_id": policy.id,
                  "period": period, "policy_version": policy.version, "amount": policy.amount,
                  "department": policy.department, "status": "objection-window", "eligible_at": event_at,
                  "created_at": now, "objection_until": now + timedelta(days=self.settings.objection_days),
                  "needs_approval": needs_approval, "approved_by": None, "paid_at": None, "note": None}
        created = (await conn.execute(insert_ignore(conn, m.payouts, values))).rowcount == 1
        if created:
            outcome.payouts.append(payout_id)
            await self.audit.append_in(conn, [AuditEvent(
                "livelihood.payout.create", f"payout:{payout_id}", actor="livelihood", actor_kind="service",
                role="service", tenant=tenant, detail={"policy": policy.id, "period": period,
                                                       "amount": policy.amount, "approval": needs_approval})])

    async def _after_commit(self, tenant: str, outcome: Outcome) -> None:
        if outcome.deliveries and self.notifier is not None:
            self.notifier.wake()
        if self.bus is not None and outcome.payouts:
            await self.bus.publish(PAYOUT_TOPIC, {"tenant": tenant, "created": len(outcome.payouts)})

    async def life_event(self, tenant: str, subject_id: str, event_at: datetime | None = None) -> dict[str, Any]:
        """Re-evaluate one subject (a birthday needs no new record: age is derived from the date)."""
        async with self.write() as conn:
            subject = await self.store.subject(conn, tenant, subject_id)
            if subject is None:
                raise ResourceNotFound(f"unknown person or company {subject_id!r}")
            outcome = await self._reevaluate(conn, tenant, subject_id, subject.kind, event_at or clock.now())
        await self._after_commit(tenant, outcome)
        return outcome.summary()

    async def sweep(self, tenant: str, only: list[str] | None = None, batch: int = 500) -> dict[str, Any]:
        """Re-evaluate every subject (after a new policy or version); returns the counts."""
        total = Outcome()
        after = ""
        while True:
            async with self.engine.connect() as conn:
                ids = [r.id for r in (await conn.execute(select(m.subjects.c.id).where(
                    m.subjects.c.tenant == tenant, m.subjects.c.id > after).order_by(m.subjects.c.id)
                    .limit(batch))).all()]
            if not ids:
                break
            for subject_id in ids:
                async with self.write() as conn:
                    subject = await self.store.subject(conn, tenant, subject_id)
                    outcome = await self._reevaluate(conn, tenant, subject_id, subject.kind, clock.now(), only)
                await self._after_commit(tenant, outcome)
                total.merge(outcome)
            after = ids[-1]
        return total.summary()

    # ------------------------------------------------------------------ the resident's side

    async def my_subject(self, tenant: str, principal: Principal) -> Any:
        async with self.engine.connect() as conn:
            subject = await self.store.subject_of_user(conn, tenant, principal.id)
        if subject is None:
            raise ResourceNotFound("no profile is linked to this account")
        return subject

    async def services_for(self, tenant: str, principal: Principal) -> dict[str, Any]:
        """'Services for me': the caller's current decisions with why they qualify."""
        subject = await self.my_subject(tenant, principal)
        catalogue = {p.id: p for p in await self.catalogue(tenant)}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.decisions).where(
                m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                m.decisions.c.eligible.is_(True)).order_by(m.decisions.c.policy_id))).all()
            pays = {(r.policy_id, r.period): r for r in (await conn.execute(select(m.payouts).where(
                m.payouts.c.tenant == tenant, m.payouts.c.subject_id == subject.id))).all()}
        items = []
        for row in rows:
            policy = catalogue.get(row.policy_id)
            if policy is None:
                continue
            pay = pays.get((row.policy_id, row.period))
            items.append({"policy": policy_view(policy), "period": row.period, "status": row.status,
                          "why": row.explanation, "evaluatedAt": as_utc(row.evaluated_at).isoformat(),
                          "payout": payout_view(pay) if pay is not None else None,
                          "application": row.application})
        return {"subject": subject.id, "kind": subject.kind, "items": items}

    async def confirm(self, tenant: str, principal: Principal, policy_id: str) -> dict[str, Any]:
        """One click: the invitation becomes a pre-filled application handed to the services domain."""
        subject = await self.my_subject(tenant, principal)
        policy = await self.policy(tenant, policy_id)
        if policy.mode != "invite":
            raise Conflict(f"{policy_id} is granted without application (免申即享)")
        async with self.write() as conn:
            row = await _current_invitation(conn, tenant, subject.id, policy_id)
            if row.application is not None:
                return {"application": row.application, "repeated": True}
            facts = await self.store.facts(conn, tenant, subject.id)
            used = {item.get("source") for item in row.explanation if item.get("source")}
            form = {name: facts[name].value for name in sorted(used) if name in facts}
            application = {"id": uuid.uuid4().hex, "serviceCode": policy.service_code or policy.id,
                           "policy": policy.id, "policyVersion": policy.version, "period": row.period,
                           "form": form, "prefilledFrom": sorted({facts[n].department for n in form}),
                           "requestedAt": clock.now().isoformat()}
            await conn.execute(m.decisions.update().where(
                m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                m.decisions.c.policy_id == policy_id, m.decisions.c.period == row.period).values(
                status="confirmed", confirmed_at=clock.now(), application=application))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.confirm",
                                                            f"policy:{policy_id}", tenant=tenant)])
        if self.bus is not None:
            await self.bus.publish(APPLICATION_TOPIC, {"tenant": tenant, "applicant": principal.id,
                                                       "applicantKind": subject.kind, **application})
            # In one process the services domain has answered by now (receipt, or why it refused).
            async with self.engine.connect() as conn:
                stored = (await conn.execute(select(m.decisions.c.application).where(
                    m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                    m.decisions.c.policy_id == policy_id, m.decisions.c.period == row.period))).scalar_one()
            application = stored or application
        return {"application": application, "repeated": False}

    async def decline(self, tenant: str, principal: Principal, policy_id: str) -> dict[str, Any]:
        """'Not for me': the resident declines one invitation (a refusal on the uptake page). A later
        re-evaluation does not invite again for the same period; a confirmed one cannot be declined."""
        subject = await self.my_subject(tenant, principal)
        policy = await self.policy(tenant, policy_id)
        if policy.mode != "invite":
            raise Conflict(f"{policy_id} is granted without application (免申即享): object to its payout instead")
        async with self.write() as conn:
            row = await _current_invitation(conn, tenant, subject.id, policy_id)
            if row.status == "declined":
                return {"policy": policy_id, "period": row.period, "status": "declined", "repeated": True}
            if row.status == "confirmed":
                raise Conflict(f"{policy_id} is already confirmed: its application is with the service desk")
            await conn.execute(m.decisions.update().where(
                m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                m.decisions.c.policy_id == policy_id, m.decisions.c.period == row.period).values(status="declined"))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.confirm", f"policy:{policy_id}",
                                                            tenant=tenant, declined=True)])
        return {"policy": policy_id, "period": row.period, "status": "declined", "repeated": False}

    # ------------------------------------------------------------------ the services domain's answers

    def _service_codes(self) -> set[str]:
        """The service codes of invitations (shipped and tenants' versions): which applications concern us."""
        codes = {p.service_code for p in self._shipped if p.service_code}
        for _stamp, policies in self._catalogues.values():
            codes |= {p.service_code for p in policies if p.service_code}
        return codes

    async def _update_application(self, tenant: str, user_id: str, app_id: str, changes: dict[str, Any]) -> bool:
        """Merge `changes` into the confirmed decision's application whose id is `app_id`."""
        async with self.write() as conn:
            subject = await self.store.subject_of_user(conn, tenant, user_id)
            if subject is None:
                return False
            rows = (await conn.execute(select(m.decisions).where(
                m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                m.decisions.c.status == "confirmed"))).all()
            for row in rows:
                if row.application and row.application.get("id") == app_id:
                    await conn.execute(m.decisions.update().where(
                        m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject.id,
                        m.decisions.c.policy_id == row.policy_id, m.decisions.c.period == row.period)
                        .values(application={**row.application, **changes}))
                    return True
        return False

    async def on_application_changed(self, event: Event) -> None:
        """The services domain started (or moved) a pre-filled application: keep its receipt and status."""
        app = event.payload.get("application") or {}
        tenant = event.payload.get("tenant")
        if app.get("serviceCode") not in self._service_codes() or not isinstance(tenant, str):
            return
        await self._update_application(tenant, str(app.get("applicant")), str(app.get("id")), {
            "receipt": app.get("receipt"), "status": app.get("status"), "refused": None,
            "updatedAt": clock.now().isoformat()})

    async def on_application_refused(self, event: Event) -> None:
        tenant, user_id = event.payload.get("tenant"), event.payload.get("applicant")
        if isinstance(tenant, str) and isinstance(user_id, str):
            await self._update_application(tenant, user_id, str(event.payload.get("id")), {
                "refused": str(event.payload.get("reason"))[:1000], "updatedAt": clock.now().isoformat()})

    async def republish_pending(self, older_than: timedelta = timedelta(minutes=1),
                                window: timedelta = timedelta(days=2), batch: int = 500) -> int:
        """Ask again for confirmed applications the services domain has not answered (an event lost when a
        process stopped between the commit and the publication); the services domain starts each once.
        Confirmations of the last `window` are read page by page (the answered ones are skipped in Python:
        the answer is inside the application's JSON)."""
        if self.bus is None:
            return 0
        now = clock.now()
        sent = 0
        after: tuple[datetime, str, str, str, str] | None = None
        d = m.decisions.c
        while True:
            query = select(m.decisions, m.subjects.c.user_id, m.subjects.c.kind).join(
                m.subjects, and_(m.subjects.c.tenant == d.tenant, m.subjects.c.id == d.subject_id)).where(
                d.status == "confirmed", d.confirmed_at <= now - older_than, d.confirmed_at >= now - window)
            if after is not None:
                query = query.where(tuple_(d.confirmed_at, d.tenant, d.subject_id, d.policy_id, d.period) >
                                    tuple_(*after))
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query.order_by(d.confirmed_at, d.tenant, d.subject_id, d.policy_id,
                                                          d.period).limit(batch))).all()
            for row in rows:
                app = row.application or {}
                if app.get("receipt") or app.get("refused") or not row.user_id:
                    continue
                await self.bus.publish(APPLICATION_TOPIC, {"tenant": row.tenant, "applicant": row.user_id,
                                                           "applicantKind": row.kind, **app})
                sent += 1
            if len(rows) < batch:
                return sent
            last = rows[-1]
            after = (last.confirmed_at, last.tenant, last.subject_id, last.policy_id, last.period)

    async def opt_out(self, tenant: str, principal: Principal, opt_out: bool) -> dict[str, Any]:
        subject = await self.my_subject(tenant, principal)
        async with self.write() as conn:
            if opt_out:
                await conn.execute(insert_ignore(conn, m.optouts, {"tenant": tenant, "subject_id": subject.id,
                                                                   "at": clock.now()}))
            else:
                await conn.execute(m.optouts.delete().where(m.optouts.c.tenant == tenant,
                                                            m.optouts.c.subject_id == subject.id))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.optout", f"subject:{subject.id}",
                                                            tenant=tenant, optOut=opt_out)])
        return {"optedOut": opt_out}

    async def object(self, tenant: str, principal: Principal, payout_id: str, reason: Any) -> dict[str, Any]:
        subject = await self.my_subject(tenant, principal)
        if not isinstance(reason, str) or not 0 < len(reason.strip()) <= 1000:
            raise BadRequestData("reason: a text of 1-1000 characters")
        async with self.write() as conn:
            done = await conn.execute(m.payouts.update().where(
                m.payouts.c.tenant == tenant, m.payouts.c.id == payout_id, m.payouts.c.subject_id == subject.id,
                m.payouts.c.status.in_(("objection-window", "awaiting-approval")),
                m.payouts.c.objection_until > clock.now()).values(status="objected", note=reason.strip()))
            if done.rowcount != 1:
                raise ResourceNotFound("no payout of yours in its objection window with this id")
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.payout.object",
                                                            f"payout:{payout_id}", tenant=tenant)])
        return {"payout": payout_id, "status": "objected"}

    # ------------------------------------------------------------------ staff

    async def payout_row(self, tenant: str, payout_id: str) -> Any:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.payouts).where(m.payouts.c.tenant == tenant,
                                                              m.payouts.c.id == payout_id))).first()
        if row is None:
            raise ResourceNotFound(f"no payout {payout_id!r}")
        return row

    async def approve(self, tenant: str, principal: Principal, payout_id: str, approve: bool) -> dict[str, Any]:
        row = await self.payout_row(tenant, payout_id)
        if not row.needs_approval:
            raise Conflict("this payout is below the approval threshold")
        new = "approved" if approve else "rejected"
        async with self.write() as conn:
            done = await conn.execute(m.payouts.update().where(
                m.payouts.c.id == payout_id, m.payouts.c.approved_by.is_(None),
                m.payouts.c.status.in_(("objection-window", "awaiting-approval"))).values(
                approved_by=principal.username or principal.id,
                status=new if (not approve or row.status == "awaiting-approval") else row.status))
            if done.rowcount != 1:
                raise Conflict("the payout was already decided")
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.payout.approve",
                                                            f"payout:{payout_id}", tenant=tenant, approved=approve)])
        await self.settle(tenant)
        return payout_view(await self.payout_row(tenant, payout_id))

    async def settle(self, tenant: str | None = None, now: datetime | None = None) -> int:
        """Pay what is due: past its objection window and, above the threshold, approved."""
        now = now or clock.now()
        paid = 0
        async with self.write() as conn:
            query = select(m.payouts).where(m.payouts.c.status.in_(("objection-window", "awaiting-approval",
                                                                     "approved")),
                                            m.payouts.c.objection_until <= now)
            if tenant is not None:
                query = query.where(m.payouts.c.tenant == tenant)
            events = []
            for row in (await conn.execute(query)).all():
                if row.needs_approval and row.approved_by is None:
                    if row.status != "awaiting-approval":
                        await conn.execute(m.payouts.update().where(m.payouts.c.id == row.id)
                                           .values(status="awaiting-approval"))
                    continue
                if row.status == "rejected":
                    continue
                await conn.execute(m.payouts.update().where(m.payouts.c.id == row.id,
                                                            m.payouts.c.status == row.status)
                                   .values(status="paid", paid_at=now))
                events.append(AuditEvent("livelihood.payout.pay", f"payout:{row.id}", actor="livelihood",
                                         actor_kind="service", role="service", tenant=row.tenant,
                                         detail={"policy": row.policy_id, "amount": row.amount}))
                paid += 1
            await self.audit.append_in(conn, events)
        return paid

    async def payouts(self, tenant: str, status: str | None, department: str | None, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            query = select(m.payouts).where(m.payouts.c.tenant == tenant)
            if status:
                query = query.where(m.payouts.c.status == status)
            if department:
                query = query.where(m.payouts.c.department == department)
            rows = (await conn.execute(query.order_by(m.payouts.c.created_at.desc()).limit(limit))).all()
        return {"items": [payout_view(r) for r in rows]}

    async def uptake(self, tenant: str, departments: frozenset[str] | None) -> dict[str, Any]:
        """Per policy: eligible, notified, confirmed, declined (refusals), opted out, granted, paid;
        reach = told or paid / eligible."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.decisions.c.policy_id, m.decisions.c.status,
                                              func.count().label("n"))
                                       .where(m.decisions.c.tenant == tenant, m.decisions.c.eligible.is_(True))
                                       .group_by(m.decisions.c.policy_id, m.decisions.c.status))).all()
            notified: dict[str, int] = dict((await conn.execute(select(m.decisions.c.policy_id, func.count()).where(
                m.decisions.c.tenant == tenant, m.decisions.c.eligible.is_(True),
                m.decisions.c.notified_at.is_not(None)).group_by(m.decisions.c.policy_id))).all())
            paid: dict[str, int] = dict((await conn.execute(select(m.payouts.c.policy_id, func.count()).where(
                m.payouts.c.tenant == tenant, m.payouts.c.status == "paid").group_by(m.payouts.c.policy_id))).all())
        per: dict[str, dict[str, int]] = {}
        for row in rows:
            per.setdefault(row.policy_id, {})[row.status] = int(row.n)
        out = []
        for policy in await self.catalogue(tenant):
            if departments is not None and policy.department not in departments:
                continue
            counts = per.get(policy.id, {})
            eligible = sum(counts.values())
            reached = int(notified.get(policy.id, 0)) if policy.mode == "invite" else counts.get("granted", 0)
            out.append({"policy": policy.id, "name": policy.name, "department": policy.department,
                        "mode": policy.mode, "eligible": eligible, "notified": int(notified.get(policy.id, 0)),
                        "confirmed": counts.get("confirmed", 0), "declined": counts.get("declined", 0),
                        "optedOut": counts.get("opted-out", 0),
                        "granted": counts.get("granted", 0), "paid": int(paid.get(policy.id, 0)),
                        "reach": round(100.0 * reached / eligible, 1) if eligible else None})
        return {"items": out}


@dataclass
class Outcome:
    eligible: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)
    opted_out: list[str] = field(default_factory=list)
    payouts: list[str] = field(default_factory=list)
    deliveries: bool = False

    def merge(self, other: Outcome) -> None:
        self.eligible += other.eligible
        self.notified += other.notified
        self.opted_out += other.opted_out
        self.payouts += other.payouts

    def summary(self) -> dict[str, Any]:
        return {"newlyEligible": self.eligible if len(self.eligible) < 50 else len(self.eligible),
                "notified": len(self.notified), "optedOut": len(self.opted_out), "payouts": len(self.payouts)}


def notice_text(policy: Policy) -> tuple[str, str, str]:
    # A company's notice opens its policy calculator (score, why, what-if); a resident's, "services for me".
    page = "/portal/policy-calculator" if policy.audience == "company" else "/portal/services-for-me"
    link = f"{page}#{policy.id}"
    if policy.mode == "automatic":
        amount = f"{policy.amount:g} 元" if policy.amount else policy.benefit.get("unit", "")
        return (f"免申即享:{policy.name}",
                f"您符合{policy.name}的条件,无需申请,将按{policy.period_label()}发放{amount}。"
                f"如有异议请在公示期内提出。\nYou qualify for {policy.name_en}; it is granted without application.",
                link)
    return (f"服务找人:{policy.name}",
            f"根据政府已掌握的信息,您可能符合{policy.name}的条件。一键确认即可生成预填申请,无需重复填报。\n"
            f"You may qualify for {policy.name_en}: confirm with one click to get a pre-filled application.",
            link)


def policy_view(policy: Policy) -> dict[str, Any]:
    return {"id": policy.id, "version": policy.version, "name": policy.name, "nameEn": policy.name_en,
            "legalBasis": policy.legal_basis, "department": policy.department, "audience": policy.audience,
            "purpose": policy.purpose, "mode": policy.mode, "period": policy.period, "benefit": policy.benefit,
            "effectiveFrom": policy.effective_from.isoformat(),
            "effectiveTo": policy.effective_to.isoformat() if policy.effective_to else None,
            "serviceCode": policy.service_code, "conditions": policy.source.get("conditions"),
            "derivedFields": sorted(DERIVED)}


def payout_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "policy": row.policy_id, "period": row.period, "amount": row.amount,
            "department": row.department, "status": row.status, "needsApproval": row.needs_approval,
            "eligibleAt": as_utc(row.eligible_at).isoformat(), "createdAt": as_utc(row.created_at).isoformat(),
            "objectionUntil": as_utc(row.objection_until).isoformat(),
            "paidAt": as_utc(row.paid_at).isoformat() if row.paid_at else None}


async def _current_invitation(conn: AsyncConnection, tenant: str, subject_id: str, policy_id: str) -> Any:
    """The subject's latest eligible decision on `policy_id` (the invitation a confirm or decline answers)."""
    row = (await conn.execute(select(m.decisions).where(
        m.decisions.c.tenant == tenant, m.decisions.c.subject_id == subject_id,
        m.decisions.c.policy_id == policy_id, m.decisions.c.eligible.is_(True))
        .order_by(m.decisions.c.period.desc()).limit(1))).first()
    if row is None:
        raise ResourceNotFound(f"no current invitation for {policy_id}")
    return row
