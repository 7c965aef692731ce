"""Waste sorting: cards, deposits and their points, redemptions, and the community figures."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.db import WritingService, dialect_insert
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.messages import city_zone
from cityos.livelihood.waste.models import CATEGORIES, balances, cards, deposits, ledger, rewards
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Unauthorized, require_allowed

CODE = re.compile(r"^[A-Za-z0-9_\-:.]{1,64}$")
MAX_WEIGHT_KG = 100.0
# Points for a correctly sorted deposit: recyclables by weight (1 per 0.5 kg, at most 10), the rest per deposit.
FLAT_POINTS = {"kitchen": 2, "hazardous": 5, "other": 1}


def check(principal: Principal | None, action: str, tenant: str, owner: str | None = None) -> None:
    require_allowed(principal, action, Resource("waste", tenant, owner=owner))


def code(value: Any, name: str) -> str:
    if not isinstance(value, str) or not CODE.match(value):
        raise BadRequestData(f"{name} must be 1–64 letters, digits or _-:.")
    return value


def points_for(category: str, weight_kg: float, correct: bool | None) -> int:
    """Points are earned by correct sorting only; an unchecked deposit earns when it is checked."""
    if not correct:
        return 0
    if category == "recyclable":
        return min(10, math.floor(weight_kg / 0.5))
    return FLAT_POINTS[category]


def deposit_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "point": row.point, "scan": row.scan, "community": row.community,
            "category": row.category, "weightKg": row.weight_kg, "correct": row.correct,
            "checkedBy": row.checked_by, "points": row.points, "at": clock.iso(clock.as_utc(row.at))}


class WasteService(WritingService):
    # ------------------------------------------------------------------ cards

    async def register_card(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """A resident links a card to themself (or staff issue one to a resident)."""
        card, community = code(body.get("card"), "card"), code(body.get("community"), "community")
        staff = bool(authorize(principal, "waste.manage", Resource("waste", tenant)))
        person = body.get("person") if staff and body.get("person") else (principal.id if principal else None)
        if person is None:
            raise Unauthorized()
        if not staff:
            check(principal, "waste.own", tenant, owner=principal.id if principal else None)
        async with self._write() as conn:
            known = (await conn.execute(select(cards).where(cards.c.tenant == tenant, cards.c.card == card))).first()
            if known is not None:
                raise Conflict("this card is already registered")
            await conn.execute(cards.insert().values(tenant=tenant, card=card, person=str(person)[:256],
                                                     community=community, active=True, issued_at=clock.now()))
        return {"card": card, "community": community, "active": True}

    # ------------------------------------------------------------------ deposits (bins, attendants)

    async def deposit(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                                        bool]:
        """Record a scan at a bin; returns (deposit, created). The same (point, scan) again returns the first
        deposit unchanged (a bin that resends after a lost answer credits nothing twice)."""
        check(principal, "waste.deposit", tenant)
        point, scan, card = code(body.get("point"), "point"), code(body.get("scan"), "scan"), code(body.get("card"),
                                                                                                   "card")
        category = body.get("category")
        if category not in CATEGORIES:
            raise BadRequestData(f"category must be one of {', '.join(CATEGORIES)}")
        weight = body.get("weightKg")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= MAX_WEIGHT_KG \
                or not math.isfinite(weight):
            raise BadRequestData(f"weightKg must be a number above 0 and at most {MAX_WEIGHT_KG}")
        correct = body.get("correct")
        if correct is not None and not isinstance(correct, bool):
            raise BadRequestData("correct must be true, false or absent (not yet checked)")
        checked_by = body.get("checkedBy", "sensor" if correct is not None else None)
        if checked_by not in (None, "sensor", "attendant"):
            raise BadRequestData("checkedBy must be sensor or attendant")
        try:
            async with self._write() as conn:
                owner = (await conn.execute(select(cards).where(cards.c.tenant == tenant, cards.c.card == card,
                                                                cards.c.active.is_(True)))).first()
                if owner is None:
                    raise ResourceNotFound("unknown or withdrawn card")
                earned = points_for(category, float(weight), correct)
                row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "point": point, "scan": scan, "card": card,
                       "person": owner.person, "community": owner.community, "category": category,
                       "weight_kg": float(weight), "correct": correct, "checked_by": checked_by, "points": earned,
                       "at": clock.now()}
                await conn.execute(deposits.insert().values(**row))
                if earned:
                    await self._credit(conn, tenant, owner.person, earned, "deposit", row["id"])
        except IntegrityError:
            async with self.engine.connect() as conn:
                first = (await conn.execute(select(deposits).where(
                    deposits.c.tenant == tenant, deposits.c.point == point, deposits.c.scan == scan))).one()
            if first.card != card or first.category != category:
                raise Conflict("this scan id was already used for another deposit at this point") from None
            return deposit_view(first), False
        return deposit_view(SimpleNamespace(**row)), True

    async def check_deposit(self, principal: Principal | None, tenant: str, deposit_id: str,
                            correct: bool) -> dict[str, Any]:
        """An attendant's check of an unchecked deposit; the points follow the result, once."""
        check(principal, "waste.deposit", tenant)
        async with self._write() as conn:
            row = (await conn.execute(select(deposits).where(deposits.c.tenant == tenant,
                                                             deposits.c.id == deposit_id))).first()
            if row is None:
                raise ResourceNotFound(f"no deposit {deposit_id!r}")
            earned = points_for(row.category, row.weight_kg, correct)
            changed = await conn.execute(update(deposits).where(
                deposits.c.tenant == tenant, deposits.c.id == deposit_id, deposits.c.correct.is_(None))
                .values(correct=correct, checked_by="attendant", points=earned))
            if changed.rowcount != 1:
                raise Conflict("this deposit was already checked")
            if earned:
                await self._credit(conn, tenant, row.person, earned, "deposit", deposit_id)
            updated = (await conn.execute(select(deposits).where(deposits.c.tenant == tenant,
                                                                 deposits.c.id == deposit_id))).one()
        return deposit_view(updated)

    async def _credit(self, conn: AsyncConnection, tenant: str, person: str, points: int, reason: str,
                      ref: str) -> None:
        statement = dialect_insert(conn, balances).values(tenant=tenant, person=person, points=points)
        await conn.execute(statement.on_conflict_do_update(index_elements=["tenant", "person"],
                                                           set_={"points": balances.c.points + points}))
        await conn.execute(ledger.insert().values(tenant=tenant, id=uuid.uuid4().hex[:16], person=person,
                                                  delta=points, reason=reason, ref=ref, at=clock.now()))

    # ------------------------------------------------------------------ points (residents)

    async def balance(self, principal: Principal | None, tenant: str) -> dict[str, Any]:
        check(principal, "waste.own", tenant, owner=principal.id if principal else None)
        assert principal is not None
        async with self.engine.connect() as conn:
            points = (await conn.execute(select(balances.c.points).where(
                balances.c.tenant == tenant, balances.c.person == principal.id))).scalar_one_or_none() or 0
            history = (await conn.execute(select(ledger).where(ledger.c.tenant == tenant,
                                                               ledger.c.person == principal.id)
                                          .order_by(ledger.c.at.desc()).limit(50))).all()
        return {"points": points, "history": [{"delta": r.delta, "reason": r.reason, "ref": r.ref,
                                               "at": clock.iso(clock.as_utc(r.at))} for r in history]}

    async def my_deposits(self, principal: Principal | None, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
        """The resident's own deposits, newest first: where, what, how heavy, whether it was sorted right."""
        check(principal, "waste.own", tenant, owner=principal.id if principal else None)
        assert principal is not None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(deposits).where(deposits.c.tenant == tenant,
                                                              deposits.c.person == principal.id)
                                       .order_by(deposits.c.at.desc()).limit(limit))).all()
        return [deposit_view(r) for r in rows]

    async def add_reward(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        check(principal, "waste.manage", tenant)
        name, cost, stock = body.get("name"), body.get("cost"), body.get("stock")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise BadRequestData("name must be a non-empty string")
        for label, value in (("cost", cost), ("stock", stock)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise BadRequestData(f"{label} must be a whole number from 1 to 1,000,000")
        row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "name": name.strip(), "cost": cost, "stock": stock}
        async with self._write() as conn:
            await conn.execute(rewards.insert().values(**row))
        return {"id": row["id"], "name": row["name"], "cost": cost, "stock": stock}

    async def list_rewards(self, tenant: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(rewards).where(rewards.c.tenant == tenant)
                                       .order_by(rewards.c.cost))).all()
        return [{"id": r.id, "name": r.name, "cost": r.cost, "stock": r.stock} for r in rows]

    async def redeem(self, principal: Principal | None, tenant: str, reward_id: str) -> dict[str, Any]:
        """Spend points on a reward: the balance and the stock are each taken by one conditional UPDATE, so the
        same points can never pay twice, however many redemptions race."""
        check(principal, "waste.own", tenant, owner=principal.id if principal else None)
        assert principal is not None
        async with self._write() as conn:
            reward = (await conn.execute(select(rewards).where(rewards.c.tenant == tenant,
                                                               rewards.c.id == reward_id))).first()
            if reward is None:
                raise ResourceNotFound(f"no reward {reward_id!r}")
            paid = await conn.execute(update(balances).where(
                balances.c.tenant == tenant, balances.c.person == principal.id, balances.c.points >= reward.cost)
                .values(points=balances.c.points - reward.cost))
            if paid.rowcount != 1:
                raise Conflict(f"not enough points: {reward.name} costs {reward.cost}")
            taken = await conn.execute(update(rewards).where(rewards.c.tenant == tenant, rewards.c.id == reward_id,
                                                             rewards.c.stock > 0).values(stock=rewards.c.stock - 1))
            if taken.rowcount != 1:
                raise Conflict(f"{reward.name} is out of stock")
            redemption = uuid.uuid4().hex[:16]
            await conn.execute(ledger.insert().values(tenant=tenant, id=uuid.uuid4().hex[:16], person=principal.id,
                                                      delta=-reward.cost, reason="redeem", ref=redemption,
                                                      at=clock.now()))
            left = (await conn.execute(select(balances.c.points).where(
                balances.c.tenant == tenant, balances.c.person == principal.id))).scalar_one()
        return {"redemption": redemption, "reward": reward.name, "cost": reward.cost, "points": left}

    # ------------------------------------------------------------------ figures (aggregates only)

    async def trends(self, tenant: str, community: str | None, weeks: int) -> list[dict[str, Any]]:
        """Per community and week (the last `weeks` weeks, city time): participation and accuracy, so a trend
        shows. Participation is the share of today's registered cards that deposited in that week."""
        now = clock.now().astimezone(city_zone())
        start_day = now.date() - timedelta(days=7 * weeks - 1)
        since = datetime.combine(start_day, datetime.min.time(), city_zone())
        card_query = select(cards.c.community, func.count()).where(
            cards.c.tenant == tenant, cards.c.active.is_(True)).group_by(cards.c.community)
        deposit_query = select(deposits.c.community, deposits.c.card, deposits.c.correct, deposits.c.at).where(
            deposits.c.tenant == tenant, deposits.c.at >= since)
        if community:
            card_query = card_query.where(cards.c.community == code(community, "community"))
            deposit_query = deposit_query.where(deposits.c.community == community)
        async with self.engine.connect() as conn:
            registered: dict[str, int] = {r[0]: r[1] for r in (await conn.execute(card_query)).all()}
            rows = (await conn.execute(deposit_query)).all()
        buckets: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows:
            week = (clock.as_utc(row.at).astimezone(city_zone()).date() - start_day).days // 7
            bucket = buckets.setdefault((row.community, week), {"cards": set(), "correct": 0, "checked": 0,
                                                                "deposits": 0})
            bucket["cards"].add(row.card)
            bucket["deposits"] += 1
            if row.correct is not None:
                bucket["checked"] += 1
                bucket["correct"] += bool(row.correct)
        out = []
        for name in sorted(set(registered) | {c for c, _ in buckets}):
            series = []
            for week in range(weeks):
                seen = buckets.get((name, week)) or {"cards": set(), "correct": 0, "checked": 0, "deposits": 0}
                series.append({
                    "weekStart": (start_day + timedelta(days=7 * week)).isoformat(),
                    "deposits": seen["deposits"],
                    "participation": round(len(seen["cards"]) / registered[name], 4) if registered.get(name)
                    else None,
                    "accuracy": round(seen["correct"] / seen["checked"], 4) if seen["checked"] else None})
            out.append({"community": name, "cards": registered.get(name, 0), "weeks": series})
        return out

    async def stats(self, tenant: str, community: str | None, days: int) -> list[dict[str, Any]]:
        """Per community over the last `days`: participation (cards with a deposit ÷ registered cards) and
        accuracy (correct ÷ checked deposits), with weights per category. No personal data."""
        since = clock.now() - timedelta(days=days)
        card_query = select(cards.c.community, func.count().label("cards")).where(
            cards.c.tenant == tenant, cards.c.active.is_(True)).group_by(cards.c.community)
        deposit_query = select(
            deposits.c.community, func.count(func.distinct(deposits.c.card)).label("active"),
            func.count().label("deposits"),
            func.sum(case((deposits.c.correct.is_(True), 1), else_=0)).label("correct"),
            func.sum(case((deposits.c.correct.is_not(None), 1), else_=0)).label("checked"),
            func.sum(deposits.c.weight_kg).label("kg")).where(
            deposits.c.tenant == tenant, deposits.c.at >= since).group_by(deposits.c.community)
        if community:
            card_query = card_query.where(cards.c.community == community)
            deposit_query = deposit_query.where(deposits.c.community == community)
        async with self.engine.connect() as conn:
            registered = {r.community: r.cards for r in (await conn.execute(card_query)).all()}
            used = {r.community: r for r in (await conn.execute(deposit_query)).all()}
        out = []
        for name in sorted(set(registered) | set(used)):
            row = used.get(name)
            active = row.active if row else 0
            checked = int(row.checked or 0) if row else 0
            out.append({"community": name, "cards": registered.get(name, 0), "activeCards": active,
                        "participation": round(active / registered[name], 4) if registered.get(name) else None,
                        "deposits": row.deposits if row else 0,
                        "accuracy": round(int(row.correct or 0) / checked, 4) if row and checked else None,
                        "checked": checked, "correct": int(row.correct or 0) if row else 0,
                        "kg": round(float(row.kg or 0), 2) if row else 0.0, "days": days})
        return out
