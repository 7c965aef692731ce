"""The citizens' council: membership, proposals, comments, votes, results and moderation."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.db import WritingService, dialect_insert
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.livelihood.council.models import CHOICES, comments, members, proposals, votes
from cityos.security.policy import Principal, Resource
from cityos.security.service import Forbidden, require_allowed

COMMUNITY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_BODY = 5000
MIN_DAYS, MAX_DAYS = 1, 60


def check(principal: Principal | None, action: str, tenant: str) -> None:
    require_allowed(principal, action, Resource("council", tenant))


def acting(principal: Principal | None, action: str, tenant: str) -> Principal:
    """The signed-in principal allowed `action` (actions that no anonymous caller has)."""
    check(principal, action, tenant)
    assert principal is not None
    return principal


def community_code(value: Any) -> str:
    if not isinstance(value, str) or not COMMUNITY.match(value):
        raise BadRequestData("community must be 1–64 letters, digits, _ or -")
    return value


def text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty text of at most {limit} characters")
    return value.strip()


class CouncilService(WritingService):
    async def _is_member(self, conn: AsyncConnection, tenant: str, community: str, person: str) -> bool:
        row = (await conn.execute(select(members.c.person).where(
            members.c.tenant == tenant, members.c.community == community, members.c.person == person))).first()
        return row is not None

    async def verify(self, principal: Principal | None, tenant: str, community: Any, person: Any) -> dict[str, Any]:
        """The community office records a resident as verified (real name and residence checked)."""
        staff = acting(principal, "council.manage", tenant)
        community = community_code(community)
        person = text(person, "person", 256)
        try:
            async with self._write() as conn:
                await conn.execute(members.insert().values(tenant=tenant, community=community, person=person,
                                                           verified_by=staff.id, verified_at=clock.now()))
        except IntegrityError:
            raise Conflict("already a verified resident of this community") from None
        return {"community": community, "person": person, "verified": True}

    async def propose(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        author = acting(principal, "council.participate", tenant)
        community = community_code(body.get("community"))
        title, content = text(body.get("title"), "title", 200), text(body.get("body"), "body", MAX_BODY)
        days = body.get("days", 14)
        if isinstance(days, bool) or not isinstance(days, int) or not MIN_DAYS <= days <= MAX_DAYS:
            raise BadRequestData(f"days (the voting period) must be a whole number from {MIN_DAYS} to {MAX_DAYS}")
        now = clock.now()
        row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "community": community, "author": author.id,
               "title": title, "body": content, "status": "open", "closes_at": now + timedelta(days=days),
               "created_at": now, "moderation_reason": None}
        async with self._write() as conn:
            if not await self._is_member(conn, tenant, community, author.id):
                raise Forbidden("only verified residents of this community can make proposals here")
            await conn.execute(proposals.insert().values(**row))
        return self._view(row, tally=None, viewer=author.id)

    @staticmethod
    def _view(row: Any, tally: dict[str, int] | None, viewer: str | None) -> dict[str, Any]:
        def get(name: str) -> Any:
            return row[name] if isinstance(row, dict) else getattr(row, name)
        closed = clock.as_utc(get("closes_at")) <= clock.now()
        view = {"id": get("id"), "community": get("community"), "title": get("title"), "body": get("body"),
                "status": get("status"), "closes": clock.iso(clock.as_utc(get("closes_at"))), "closed": closed,
                "created": clock.iso(clock.as_utc(get("created_at"))), "mine": viewer == get("author")}
        if tally is not None:
            view["results"] = tally
        if get("status") == "hidden" and viewer == get("author"):
            view["moderationReason"] = get("moderation_reason")  # the author sees why; nobody else sees it
        return view

    async def _tally(self, conn: AsyncConnection, tenant: str, proposal_id: str) -> dict[str, int]:
        rows = (await conn.execute(select(votes.c.choice, func.count()).where(
            votes.c.tenant == tenant, votes.c.proposal_id == proposal_id).group_by(votes.c.choice))).all()
        counts = {choice: 0 for choice in CHOICES}
        counts.update({choice: count for choice, count in rows})
        return counts

    async def memberships(self, principal: Principal | None, tenant: str) -> list[str]:
        """The communities where the caller is a verified resident."""
        person = acting(principal, "council.participate", tenant)
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(members.c.community).where(
                members.c.tenant == tenant, members.c.person == person.id).order_by(members.c.community))
            return [str(r) for r in rows.scalars()]

    async def proposals(self, principal: Principal | None, tenant: str, community: str) -> list[dict[str, Any]]:
        """A community's proposals: results only once voting has closed; moderated ones only to their author."""
        check(principal, "council.read", tenant)
        community = community_code(community)
        viewer = principal.id if principal else None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(proposals).where(
                proposals.c.tenant == tenant, proposals.c.community == community)
                .order_by(proposals.c.created_at.desc()).limit(200))).all()
            out = []
            for row in rows:
                if row.status == "hidden" and row.author != viewer:
                    continue
                closed = clock.as_utc(row.closes_at) <= clock.now()
                view = self._view(row, await self._tally(conn, tenant, row.id) if closed else None, viewer)
                if viewer is not None:  # the caller's own current vote, so they can see and change it
                    view["myVote"] = (await conn.execute(select(votes.c.choice).where(
                        votes.c.tenant == tenant, votes.c.proposal_id == row.id,
                        votes.c.voter == viewer))).scalar_one_or_none()
                out.append(view)
        return out

    async def _proposal(self, conn: AsyncConnection, tenant: str, proposal_id: str) -> Any:
        row = (await conn.execute(select(proposals).where(proposals.c.tenant == tenant,
                                                          proposals.c.id == proposal_id))).first()
        if row is None:
            raise ResourceNotFound(f"no proposal {proposal_id!r}")
        return row

    async def vote(self, principal: Principal | None, tenant: str, proposal_id: str, choice: Any) -> dict[str, Any]:
        voter = acting(principal, "council.participate", tenant)
        if choice not in CHOICES:
            raise BadRequestData(f"choice must be one of {', '.join(CHOICES)}")
        async with self._write() as conn:
            proposal = await self._proposal(conn, tenant, proposal_id)
            if proposal.status != "open":
                raise ResourceNotFound(f"no proposal {proposal_id!r}")
            if clock.as_utc(proposal.closes_at) <= clock.now():
                raise Conflict("voting on this proposal has closed")
            if not await self._is_member(conn, tenant, proposal.community, voter.id):
                raise Forbidden("only verified residents of this community can vote on it")
            before = (await conn.execute(select(votes.c.choice).where(
                votes.c.tenant == tenant, votes.c.proposal_id == proposal_id, votes.c.voter == voter.id))).first()
            statement = dialect_insert(conn, votes).values(tenant=tenant, proposal_id=proposal_id, voter=voter.id,
                                                           choice=choice, at=clock.now())
            await conn.execute(statement.on_conflict_do_update(
                index_elements=["tenant", "proposal_id", "voter"],
                set_={"choice": statement.excluded.choice, "at": statement.excluded.at}))
        return {"proposal": proposal_id, "choice": choice, "changed": before is not None}

    async def comment(self, principal: Principal | None, tenant: str, proposal_id: str, body: Any) -> dict[str, Any]:
        author = acting(principal, "council.participate", tenant)
        content = text(body, "body", 2000)
        async with self._write() as conn:
            proposal = await self._proposal(conn, tenant, proposal_id)
            if proposal.status != "open":
                raise ResourceNotFound(f"no proposal {proposal_id!r}")
            if not await self._is_member(conn, tenant, proposal.community, author.id):
                raise Forbidden("only verified residents of this community can comment here")
            row: dict[str, Any] = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "proposal_id": proposal_id,
                                   "author": author.id, "body": content, "at": clock.now()}
            await conn.execute(comments.insert().values(**row))
        return {"id": row["id"], "body": content, "at": clock.iso(row["at"])}

    async def comments_of(self, principal: Principal | None, tenant: str, proposal_id: str) -> list[dict[str, Any]]:
        check(principal, "council.read", tenant)
        async with self.engine.connect() as conn:
            proposal = await self._proposal(conn, tenant, proposal_id)
            if proposal.status != "open" and (principal is None or proposal.author != principal.id):
                raise ResourceNotFound(f"no proposal {proposal_id!r}")
            rows = (await conn.execute(select(comments).where(
                comments.c.tenant == tenant, comments.c.proposal_id == proposal_id).order_by(comments.c.at)
                .limit(500))).all()
        # Commenters are residents: their comments are shown, their identities are not.
        return [{"id": r.id, "body": r.body, "at": clock.iso(clock.as_utc(r.at))} for r in rows]

    async def moderate(self, principal: Principal | None, tenant: str, proposal_id: str, reason: Any) -> dict[str, Any]:
        check(principal, "council.manage", tenant)
        why = text(reason, "reason", 1000)
        async with self._write() as conn:
            proposal = await self._proposal(conn, tenant, proposal_id)
            if proposal.status == "hidden":
                raise Conflict("already moderated")
            await conn.execute(update(proposals).where(proposals.c.tenant == tenant, proposals.c.id == proposal_id)
                               .values(status="hidden", moderation_reason=why))
        return {"id": proposal_id, "status": "hidden", "moderationReason": why}
