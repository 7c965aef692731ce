"""Traffic tables and schemas: registered signals (plan and current phase), their phase commands, and
emergency pre-emption runs.

No foreign keys (the test harness empties tables in any order); rows share (tenant, signal_id).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_serializer,
    model_validator,
)
from sqlalchemy import Column, Float, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp
from cityos.traffic.signals import MAX_LINKS, MAX_PHASES, Phase, SignalPlan

metadata = MetaData()

# A signal id: a URL path segment, a key of two tables (VARCHAR(128)) and of pre-emption runs, as long as the
# platform's other ids (rules, departments). A SUMO traffic light id that is no signal id (a joined cluster of
# 166 characters) is mapped to one by `cityos.traffic.naming.signal_id`; the signal's name keeps the SUMO id.
SIGNAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")

signals = Table(
    "traffic_signals", metadata,
    Column("tenant", String(256), nullable=False),
    Column("signal_id", String(128), nullable=False),
    Column("name", String(256), nullable=False),
    Column("device", String(64), nullable=True),        # the IoT device (traffic-signal profile) that obeys commands
    Column("controller", String(32), nullable=False),
    Column("plan", JsonDoc, nullable=False),
    Column("phase", Integer, nullable=False),            # the green phase shown, or the one the change leads to
    Column("green_since", Timestamp, nullable=False),    # when that green starts (after yellow + all-red)
    Column("fallback", Integer, nullable=False, default=0),  # 1 while the fixed-time fallback runs
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "signal_id", name="pk_traffic_signals"),
)

phase_commands = Table(
    "traffic_phase_commands", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("signal_id", String(128), nullable=False),
    Column("phase", Integer, nullable=True),
    Column("source", String(32), nullable=False),        # operator | controller | fallback
    Column("outcome", String(16), nullable=False),       # applied | held | refused
    Column("detail", Text, nullable=True),
    Column("rpc_id", Integer, nullable=True),
    Column("rpc_status", String(16), nullable=True),
    Column("acked_ms", Float, nullable=True),             # decision to the device's acknowledgement (control loop)
    Column("requested_by", String(256), nullable=True),
    Column("requested_at", Timestamp, nullable=False),
)

# One row per emergency run: a vehicle's progress reports while they keep coming (a gap of more than
# `PREEMPTION_ACTIVE_S` ends the run; a later report starts a new one). In the database, not the process,
# so every API worker lists the same runs and a restart keeps them; finished runs stay as history.
preemption_runs = Table(
    "traffic_preemption_runs", metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("vehicle", String(64), nullable=False),
    Column("incident", String(64), nullable=True),
    Column("speed", Float, nullable=False),              # m/s, as last reported
    Column("signals", JsonDoc, nullable=False),          # [{signal, outcome, eta}] of the latest report
    Column("reports", Integer, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),     # the latest report; the run's end once it is over
)
Index("ix_traffic_preemption_runs_vehicle", preemption_runs.c.tenant, preemption_runs.c.vehicle,
      preemption_runs.c.updated_at)
Index("ix_traffic_preemption_runs_updated", preemption_runs.c.tenant, preemption_runs.c.updated_at)


class PhaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    state: str = Field(min_length=1, max_length=MAX_LINKS, description="one character per link: G, g or r")
    min_green: float = Field(default=5.0, alias="minGreen", ge=1, le=600)
    max_green: float = Field(default=60.0, alias="maxGreen", ge=1, le=600)
    pedestrian_min: float = Field(default=0.0, alias="pedestrianMin", ge=0, le=600)
    fixed_green: float = Field(default=30.0, alias="fixedGreen", ge=1, le=600)


# One signal link (one character of the phase states) may control several lane-to-lane connections: on real
# networks one signal head often serves a lane turning onto several roads (RESCO Ingolstadt 21: up to 4).
MAX_LINK_CONNECTIONS = 16


class ConnectionIn(BaseModel):
    """One lane-to-lane connection through the junction: its incoming and outgoing detector lanes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    in_lane: str = Field(alias="in", min_length=1, max_length=128)
    out_lane: str = Field(alias="out", min_length=1, max_length=128)


class LinkIn(ConnectionIn):
    """A signal link: its first connection (`in`, `out`: the one the controllers weigh, as the simulator's do)
    and the further connections it controls (`also`: found by route matching, pre-emption and detector checks)."""

    also: list[ConnectionIn] = Field(
        default_factory=list, max_length=MAX_LINK_CONNECTIONS - 1,
        description="the link's further lane-to-lane connections (one signal head over several), besides in → out")

    @model_validator(mode="after")
    def _connections_once(self) -> LinkIn:
        seen: set[tuple[str, str]] = set()
        for lane_in, lane_out in self.connections():
            if (lane_in, lane_out) in seen:
                raise ValueError(f"the link lists the connection {lane_in!r} → {lane_out!r} twice")
            seen.add((lane_in, lane_out))
        return self

    @model_serializer(mode="wrap")
    def _without_empty_also(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A link of one connection is stored as it always was: {"in", "out"}.
        doc: dict[str, Any] = handler(self)
        if not self.also:
            doc.pop("also", None)
        return doc

    def connections(self) -> list[tuple[str, str]]:
        """Every (incoming lane, outgoing lane) the link controls, its first connection first."""
        return [(self.in_lane, self.out_lane), *((c.in_lane, c.out_lane) for c in self.also)]


DETECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # an IoT device name


class AdvanceDetectorIn(BaseModel):
    """An advance detector of an approach: a loop (or a camera zone) over the last `distance` metres before
    the stop line of one incoming lane, a `traffic-flow` device of its own (its entity is
    `TrafficFlowObserved:<detector>`). It tells the controller which vehicles a green given now would serve."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    lane: str = Field(min_length=1, max_length=128, description="the incoming lane (a link's `in`) it watches")
    detector: str = Field(min_length=1, max_length=64, description="its IoT device name")
    distance: StrictFloat | StrictInt = Field(ge=20, le=2000, description="metres from the stop line it reaches up")


class StoplineDetectorIn(AdvanceDetectorIn):
    """A stop-line detector of an approach (停车线检测器): loops or a camera zone over the last `distance` metres of
    one incoming lane, a `traffic-flow` device of its own. While it sees vehicles the green is still discharging
    (the gap detector of actuated control), and its standing vehicles count towards the approach's (the largest
    of the lane's, the stop-line and the advance detector's). Without one, the lane's own detector stands for
    it."""

    distance: StrictFloat | StrictInt = Field(ge=5, le=200, description="metres from the stop line it reaches up")


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    phases: list[PhaseIn] = Field(min_length=1, max_length=MAX_PHASES)
    yellow: float = Field(default=3.0, ge=0, le=10)
    all_red: float = Field(default=2.0, alias="allRed", ge=0, le=10)
    conflicts: list[tuple[StrictInt, StrictInt]] = Field(default_factory=list, max_length=MAX_LINKS * MAX_LINKS)
    # A link may be null: a signal index that drives no lane (real networks have them: RESCO Ingolstadt 21's
    # cluster_1427494838_273472399). The phase states still show it, as the lamps do; no movement, route or
    # detector uses it.
    links: list[LinkIn | None] | None = Field(
        default=None, max_length=MAX_LINKS,
        description="per link: its incoming and outgoing detector lanes (and its further connections, `also`), or "
                    "null for a link that drives no lane")
    advance: list[AdvanceDetectorIn] | None = Field(default=None, max_length=MAX_LINKS,
                                                    description="advance detectors, at most one per incoming lane")
    stopline: list[StoplineDetectorIn] | None = Field(default=None, max_length=MAX_LINKS,
                                                      description="stop-line detectors, at most one per incoming lane")

    @model_validator(mode="after")
    def _some_link_drives_a_lane(self) -> PlanIn:
        if self.links and all(link is None for link in self.links):
            raise ValueError("links: every link is null; leave `links` out for a plan without detector lanes")
        return self

    def used_links(self) -> list[LinkIn]:
        """The links that drive lanes (the null ones left out)."""
        return [link for link in self.links or [] if link is not None]

    def to_plan(self) -> SignalPlan:
        return SignalPlan(
            phases=tuple(Phase(state=p.state, min_green=p.min_green, max_green=p.max_green,
                               pedestrian_min=p.pedestrian_min, fixed_green=p.fixed_green) for p in self.phases),
            yellow=self.yellow, all_red=self.all_red,
            conflicts=frozenset((min(a, b), max(a, b)) for a, b in self.conflicts))


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=256)
    device: str | None = Field(default=None, max_length=64, description="IoT device name (traffic-signal profile)")
    controller: str = Field(default="cityos", max_length=32)
    plan: PlanIn


class PhaseCommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: StrictInt


class ReadingIn(BaseModel):
    """One lane-area detector reading (TrafficFlowObserved-like, per lane)."""

    model_config = ConfigDict(extra="forbid")
    vehicles: StrictFloat | StrictInt = 0
    halting: StrictFloat | StrictInt = 0
    speed: StrictFloat | StrictInt = Field(default=0, description="m/s")
    occupancy: StrictFloat | StrictInt = Field(default=0, description="share in [0, 1]")
    waiting: StrictFloat | StrictInt = Field(default=0, description="accumulated waiting seconds")
    length: StrictFloat | StrictInt = 100


class DecideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lanes: dict[str, ReadingIn] = Field(max_length=2 * MAX_LINKS)
    apply: StrictBool = False


def signal_doc(row: Any) -> dict[str, Any]:
    return {"id": row.signal_id, "name": row.name, "device": row.device, "controller": row.controller,
            "plan": row.plan, "phase": row.phase, "fallback": bool(row.fallback)}


class PreemptSignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    signal: str = Field(min_length=1, max_length=128)
    phase: StrictInt = Field(ge=0, lt=MAX_PHASES, description="the green phase serving the route through it")
    distance: StrictFloat | StrictInt = Field(ge=0, le=100_000, description="metres from the vehicle to its stop line")
    flush_phase: StrictInt | None = Field(
        default=None, alias="flushPhase", ge=0, lt=MAX_PHASES,
        description="the phase serving the route and most of its approach, shown instead once the vehicle has "
                    "stood `stoppedFor` ≥ 10 s at this signal's green (a vehicle ahead needs a lane `phase` leaves "
                    "red)")


class PreemptIn(BaseModel):
    """An emergency vehicle's progress along its dispatched route (sent by dispatch or its AVL feed)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    vehicle: str = Field(min_length=1, max_length=64)
    incident: str | None = Field(default=None, max_length=64, description="the incident it was dispatched to")
    speed: StrictFloat | StrictInt = Field(default=0, ge=0, le=70, description="m/s")
    stopped_for: StrictFloat | StrictInt = Field(default=0, alias="stoppedFor", ge=0, le=86_400,
                                                 description="seconds the vehicle has stood still (0: moving)")
    signals: list[PreemptSignalIn] = Field(min_length=1, max_length=64, description="the signals still ahead")
