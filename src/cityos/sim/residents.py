"""Simulated residents using 一网协同 services in the demo, so its pages are not empty: a hospital and a
vaccination site with bookable times, the civic centre's hall with windows, waste-sorting points and rewards,
a community with registered residents, a notice and a council proposal; then, every few seconds, a few
residents book, take tickets (which the windows call and serve), sort waste and redeem points, vote and
comment, read notices, report repairs and confirm the fixes, while the community office works the repair
orders and the sites record who came.

Everything goes through the domains' services as the residents themselves (principals of role citizen) or as
the community office: the same rules and refusals as the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from cityos.core import clock
from cityos.core.errors import ProblemError
from cityos.core.messages import city_zone
from cityos.security.policy import Principal

log = logging.getLogger(__name__)

HALL = "civic-centre"
COMMUNITY = "tianlin"
RESIDENTS = 60
GROUPS = (("A", "户籍业务"), ("B", "社保医保"), ("C", "不动产登记"))
STEP_SECONDS = 5.0


def resident(n: int) -> Principal:
    return Principal(f"sim-resident-{n:04d}", kind="user", role="citizen", username=f"居民{n:04d}")


OFFICE = Principal("sim-community-office", kind="user", role="official", department="community-office",
                   departments=frozenset({"community-office"}), username="社区办")
HEALTH = Principal("sim-health", kind="user", role="official", department="health",
                   departments=frozenset({"health"}), username="卫健委")


async def _quietly(work: Awaitable[Any]) -> Any:
    """A refusal (a full slot, a closed window) is part of life, not an error of the simulation."""
    try:
        return await work
    except ProblemError as refusal:
        log.debug("simulated resident refused: %s", refusal.detail)
        return None


async def seed(app: Any) -> None:
    """The sites, hall, points and community the simulated residents use (idempotent enough for a restart)."""
    appointments, hall, waste, council = app.state.appointments, app.state.hall, app.state.waste, app.state.council
    community = app.state.community
    if not await appointments.list_schedules(None, ""):
        today = clock.now().astimezone(city_zone()).date()
        for kind, site, service in (("hospital", "市第一人民医院", "心内科"), ("vaccination", "天林社区卫生服务中心",
                                                                         "流感疫苗")):
            schedule = await appointments.create_schedule(HEALTH, "", {"kind": kind, "site": site,
                                                                       "service": service, "department": "health"})
            await appointments.add_slots(HEALTH, "", schedule["id"], {
                "from": today.isoformat(), "to": (today + timedelta(days=6)).isoformat(), "firstStart": "08:00",
                "lastStart": "16:30", "minutes": 30, "capacity": 3, "weekdaysOnly": False})
    for code, name in GROUPS:
        await _quietly(hall.define_group(OFFICE, "", HALL, {"code": code, "name": name}))
    for number in range(1, 5):
        await hall.open_window(OFFICE, "", HALL, number, {"skills": [GROUPS[(number - 1) % 3][0], "A"]})
    if not await waste.list_rewards(""):
        for name, cost, stock in (("环保购物袋", 10, 500), ("洗衣液", 40, 100), ("公交卡充值 10 元", 60, 100)):
            await waste.add_reward(OFFICE, "", {"name": name, "cost": cost, "stock": stock})
    for n in range(RESIDENTS):
        person = resident(n)
        await _quietly(waste.register_card(person, "", {"card": f"QR-SIM-{n:04d}", "community": COMMUNITY}))
        await _quietly(council.verify(OFFICE, "", COMMUNITY, person.id))
        await community.register(OFFICE, "", {"community": COMMUNITY, "building": f"B{n % 6 + 1}",
                                               "person": person.id})
    if not await community.list_notices(OFFICE, "", COMMUNITY):
        await community.publish(OFFICE, "", {
            "community": COMMUNITY, "title": "本周六上午二次供水水箱清洗",
            "body": "本周六 8:00–12:00 清洗二次供水水箱，期间 B1–B3 栋停水，请提前储水。",
            "buildings": ["B1", "B2", "B3"]})
    if not await council.proposals(None, "", COMMUNITY):
        await council.propose(resident(0), "", {
            "community": COMMUNITY, "title": "在小区东门加装非机动车充电桩",
            "body": "东门车棚常有飞线充电，存在火灾隐患。建议加装 20 个带定时断电的充电桩。", "days": 14})


class ResidentsActivity:
    """A few residents' errands every STEP_SECONDS."""

    def __init__(self, app: Any, seed_value: int) -> None:
        self.app = app
        self.rng = random.Random(seed_value)  # noqa: S311 (a simulation, reproducible from its seed)
        self.scans = 0

    async def step(self) -> None:
        rng, state = self.rng, self.app.state
        who = resident(rng.randrange(RESIDENTS))
        errand: Callable[[Principal], Awaitable[Any]] = rng.choice(
            [self._book, self._ticket, self._ticket, self._sort, self._sort, self._vote, self._repair,
             self._read_notices, self._redeem, self._comment, self._confirm_repairs])
        await _quietly(errand(who))
        await _quietly(self._work_orders())
        await _quietly(self._site_outcomes())
        # The windows call and serve whoever is waiting.
        for number in range(1, 5):
            called = await _quietly(state.hall.call_next(OFFICE, "", HALL, number))
            if called is None:
                continue
            await _quietly(state.hall.advance(OFFICE, "", called["id"], "serving"))
            if rng.random() < 0.8:
                await _quietly(state.hall.advance(OFFICE, "", called["id"], "done"))

    async def _book(self, who: Principal) -> Any:
        schedules = await self.app.state.appointments.list_schedules(None, "")
        if not schedules:
            return None
        free = await self.app.state.appointments.list_slots(None, "", schedule_id=self.rng.choice(schedules)["id"],
                                                             only_free=True, limit=20)
        return await self.app.state.appointments.book(who, "", self.rng.choice(free)["id"]) if free else None

    async def _ticket(self, who: Principal) -> Any:
        return await self.app.state.hall.take_ticket(who, "", HALL, self.rng.choice(GROUPS)[0], "online")

    async def _sort(self, who: Principal) -> Any:
        self.scans += 1
        category = self.rng.choice(("recyclable", "kitchen", "kitchen", "other", "hazardous"))
        correct = self.rng.random() < 0.9
        return await self.app.state.waste.deposit(OFFICE, "", {
            "point": f"bin-{self.rng.randrange(12):02d}", "scan": f"sim-{self.rng.getrandbits(48):x}",
            "card": who.id.replace("sim-resident-", "QR-SIM-"), "category": category,
            "weightKg": round(self.rng.uniform(0.2, 4.0), 2), "correct": correct})

    async def _vote(self, who: Principal) -> Any:
        proposals = await self.app.state.council.proposals(None, "", COMMUNITY)
        open_ones = [p for p in proposals if not p["closed"] and p["status"] == "open"]
        if not open_ones:
            return None
        return await self.app.state.council.vote(who, "", open_ones[0]["id"],
                                                 self.rng.choice(("yes", "yes", "no", "abstain")))

    async def _repair(self, who: Principal) -> Any:
        if self.rng.random() > 0.2:  # repairs are rarer than other errands
            return None
        place, text = self.rng.choice((("light", "楼道灯不亮"), ("lift", "电梯异响"), ("pipe", "地下室水管滴漏")))
        return await self.app.state.community.report(who, "", {"place": place, "description": text}, None)


    async def _read_notices(self, who: Principal) -> Any:
        for notice in await self.app.state.community.list_notices(who, "", None):
            if not notice["read"]:
                return await self.app.state.community.read_notice(who, "", notice["id"])
        return None

    async def _redeem(self, who: Principal) -> Any:
        rewards = [r for r in await self.app.state.waste.list_rewards("") if r["stock"] > 0]
        balance = (await self.app.state.waste.balance(who, ""))["points"]
        affordable = [r for r in rewards if r["cost"] <= balance]
        return await self.app.state.waste.redeem(who, "", affordable[0]["id"]) if affordable else None

    async def _comment(self, who: Principal) -> Any:
        if self.rng.random() > 0.3:
            return None
        proposals = await self.app.state.council.proposals(who, "", COMMUNITY)
        open_ones = [p for p in proposals if not p["closed"] and p["status"] == "open"]
        if not open_ones:
            return None
        text = self.rng.choice(("支持，晚上车棚确实有飞线", "建议同时装监控", "费用由谁承担？希望公示预算"))
        return await self.app.state.council.comment(who, "", open_ones[0]["id"], text)

    async def _confirm_repairs(self, who: Principal) -> Any:
        """Residents whose repair is done confirm it, mostly content (a rating of 3–5)."""
        community = self.app.state.community
        for order in await community.list_repairs(OFFICE, "", COMMUNITY, True):
            if order["status"] == "done":
                return await community.advance(Principal(order["reporter"], kind="user", role="citizen"), "",
                                               order["id"], "confirmed", None, self.rng.choice((3, 4, 5, 5)))
        return None

    async def _work_orders(self) -> Any:
        """The property company moves one open repair a step on (so orders show progress, some late)."""
        if self.rng.random() > 0.4:
            return None
        community = self.app.state.community
        steps = {"reported": "accepted", "accepted": "in_progress", "in_progress": "done", "reopened": "in_progress"}
        for order in await community.list_repairs(OFFICE, "", COMMUNITY, True):
            if order["status"] in steps:
                return await community.advance(OFFICE, "", order["id"], steps[order["status"]],
                                               "物业已派维修工" if order["status"] == "reported" else None)
        return None

    async def _site_outcomes(self) -> Any:
        """The sites record who came to appointments that have started (most do; some do not show)."""
        if self.rng.random() > 0.3:
            return None
        appointments = self.app.state.appointments
        now = clock.now()
        for schedule in await appointments.list_schedules(None, ""):
            for item in await appointments.for_schedule(HEALTH, "", schedule["id"], now.astimezone(city_zone()).date()):
                if item["status"] == "booked" and clock.parse_iso(item["start"]) <= now:
                    outcome = "fulfilled" if self.rng.random() < 0.9 else "noshow"
                    return await appointments.mark(HEALTH, "", item["id"], outcome)
        return None


async def run(app: Any, seed_value: int, stop: asyncio.Event) -> None:
    """Seed, then the residents' errands until `stop` (failures are logged and the next step tried)."""
    try:
        await seed(app)
    except Exception:  # the demo runs on without its residents rather than stopping
        log.exception("seeding the simulated residents failed")
        return
    activity = ResidentsActivity(app, seed_value)
    while not stop.is_set():
        try:
            await activity.step()
        except Exception:
            log.exception("a simulated residents' step failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STEP_SECONDS)
