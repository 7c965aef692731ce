"""The citizens' council (市民议事厅) on both backends: verified residents propose, comment and vote once
(changeable until the close); results appear at the close; moderation with a reason only the author sees."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from auth_tokens import Auth
from cityos.core import clock
from problem_details import problem

API = "/api/council"


class Council:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.auth = Auth(app)
        self.client = client
        self.office = self.auth.headers("official", department="community-office", username="office")

    def resident(self, user_id: str) -> dict[str, str]:
        return self.auth.headers("citizen", user_id=user_id, username=user_id)

    async def verify(self, person: str, community: str = "tianlin") -> None:
        made = await self.client.post(f"{API}/members", headers=self.office,
                                      json={"community": community, "person": person})
        assert made.status_code == 201, made.text

    async def propose(self, author: str, days: int = 7) -> dict[str, Any]:
        made = await self.client.post(f"{API}/proposals", headers=self.resident(author), json={
            "community": "tianlin", "title": "在小区东门加装非机动车充电桩",
            "body": "东门车棚常有飞线充电，存在火灾隐患。建议加装 20 个充电桩。", "days": days})
        assert made.status_code == 201, made.text
        body: dict[str, Any] = made.json()
        return body

    async def vote(self, voter: str, proposal: str, choice: str) -> httpx.Response:
        return await self.client.post(f"{API}/proposals/{proposal}/votes", headers=self.resident(voter),
                                      json={"choice": choice})


async def test_one_resident_one_vote_changeable_until_the_close(client: httpx.AsyncClient,
                                                               anon_client: httpx.AsyncClient, app: Any) -> None:
    council = Council(app, client)
    for person in ("zhang", "li", "wang"):
        await council.verify(person)
    proposal = await council.propose("zhang")
    assert (await council.vote("zhang", proposal["id"], "yes")).status_code == 200
    assert (await council.vote("li", proposal["id"], "no")).status_code == 200
    changed = await council.vote("li", proposal["id"], "yes")
    assert changed.status_code == 200 and changed.json()["changed"] is True
    # The same resident voting many times at once still counts once.
    await asyncio.gather(*(council.vote("wang", proposal["id"], "abstain") for _ in range(10)))
    listed = (await anon_client.get(f"{API}/communities/tianlin/proposals")).json()
    assert len(listed) == 1 and "results" not in listed[0]  # no results while open
    assert "zhang" not in str(listed)
    after = clock.now() + dt.timedelta(days=8)
    clock.set_clock(lambda: after)
    try:
        problem(await council.vote("li", proposal["id"], "no"), 409)
        closed = (await anon_client.get(f"{API}/communities/tianlin/proposals")).json()[0]
        assert closed["closed"] is True and closed["results"] == {"yes": 2, "no": 0, "abstain": 1}
    finally:
        clock.reset_clock()


async def test_only_verified_residents_of_the_community_take_part(client: httpx.AsyncClient,
                                                                 anon_client: httpx.AsyncClient, app: Any) -> None:
    council = Council(app, client)
    await council.verify("zhang")
    await council.verify("outsider", community="other-place")
    proposal = await council.propose("zhang")
    problem(await council.vote("outsider", proposal["id"], "yes"), 403)
    problem(await council.vote("stranger", proposal["id"], "yes"), 403)
    problem(await client.post(f"{API}/proposals", headers=council.resident("outsider"),
                              json={"community": "tianlin", "title": "t", "body": "b"}), 403)
    problem(await anon_client.post(f"{API}/proposals/{proposal['id']}/votes", json={"choice": "yes"}), 401)
    problem(await council.vote("zhang", proposal["id"], "maybe"), 400)
    problem(await council.vote("zhang", "unknown", "yes"), 404)
    problem(await client.post(f"{API}/members", headers=council.resident("zhang"),
                              json={"community": "tianlin", "person": "me"}), 403)
    problem(await client.post(f"{API}/members", headers=council.office,
                              json={"community": "tianlin", "person": "zhang"}), 409)
    for bad in ({"community": "tianlin", "title": "", "body": "b"},
                {"community": "tianlin", "title": "t", "body": "b" * 5001},
                {"community": "tian lin; drop", "title": "t", "body": "b"},
                {"community": "tianlin", "title": "t", "body": "b", "days": 0},
                {"community": "tianlin", "title": "t", "body": "b", "days": "7"}):
        problem(await client.post(f"{API}/proposals", headers=council.resident("zhang"), json=bad), 400)
    problem(await client.post(f"{API}/proposals", headers={**council.resident("zhang"),
                                                            "Content-Type": "application/json"}, content=b"{"), 400)


async def test_comments_and_moderation(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    council = Council(app, client)
    await council.verify("zhang")
    await council.verify("li")
    proposal = await council.propose("zhang")
    said = await client.post(f"{API}/proposals/{proposal['id']}/comments", headers=council.resident("li"),
                             json={"body": "赞成，最好带定时断电。"})
    assert said.status_code == 201
    comments = (await anon_client.get(f"{API}/proposals/{proposal['id']}/comments")).json()
    assert [c["body"] for c in comments] == ["赞成，最好带定时断电。"] and "li" not in {k for c in comments for k in c}
    problem(await client.post(f"{API}/proposals/{proposal['id']}/moderate", headers=council.resident("li"),
                              json={"reason": "x"}), 403)
    problem(await client.post(f"{API}/proposals/{proposal['id']}/moderate", headers=council.office, json={}), 400)
    hidden = await client.post(f"{API}/proposals/{proposal['id']}/moderate", headers=council.office,
                               json={"reason": "含有他人电话号码，请删除后重新提交"})
    assert hidden.status_code == 200
    assert (await anon_client.get(f"{API}/communities/tianlin/proposals")).json() == []
    own = (await client.get(f"{API}/communities/tianlin/proposals", headers=council.resident("zhang"))).json()
    assert own[0]["status"] == "hidden" and own[0]["moderationReason"].startswith("含有他人电话号码")
    others = (await client.get(f"{API}/communities/tianlin/proposals", headers=council.resident("li"))).json()
    assert others == []
    problem(await council.vote("li", proposal["id"], "yes"), 404)
    problem(await anon_client.get(f"{API}/proposals/{proposal['id']}/comments"), 404)


async def test_memberships_and_my_vote(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    council = Council(app, client)
    await council.verify("qin")
    await council.verify("qin", "jiangbin")
    proposal = await council.propose("qin")
    mine = await client.get(f"{API}/memberships", headers=council.resident("qin"))
    assert mine.status_code == 200 and mine.json() == ["jiangbin", "tianlin"]
    assert (await client.get(f"{API}/memberships", headers=council.resident("nobody"))).json() == []
    problem(await anon_client.get(f"{API}/memberships"), 401)
    listed = (await client.get(f"{API}/communities/tianlin/proposals", headers=council.resident("qin"))).json()
    assert listed[0]["myVote"] is None
    await council.vote("qin", proposal["id"], "no")
    await council.vote("qin", proposal["id"], "yes")
    listed = (await client.get(f"{API}/communities/tianlin/proposals", headers=council.resident("qin"))).json()
    assert listed[0]["myVote"] == "yes"
    public = (await anon_client.get(f"{API}/communities/tianlin/proposals")).json()
    assert "myVote" not in public[0]
