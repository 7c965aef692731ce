"""一数一源 at the hub's door: each attribute of an entity type may have one authoritative source (a
department and a system). A write of such an attribute through the hub API by another source is refused
(403, with the authority named) or let through and flagged, as the declared policy says.

The rules live in memory (pure checks inside the write transaction, like the rest of the write guard);
the data domain declares them, loads them from its table and records the conflicts:
- flagged writes are handed to an in-transaction listener (`take_flagged`), so a flag is stored exactly
  when its write commits;
- refused writes roll back, so they are queued (`take_refused`) and stored by the data domain after.

Only entity types with a declared source are checked: every other type (and the hub's conformance) is
untouched. Writes without a principal (the platform's own pipelines, or security switched off) carry no
source to compare and are not checked, except device readings: IoT ingest judges them as (the device's
department, `iot`) with `judge` and `hold` (cityos.iot.readings), and other domains publishing their
records write `as_source` (cityos.hub.service).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cityos.security.policy import Principal

ANY = "*"
REFUSE, FLAG = "refuse", "flag"
MAX_QUEUED = 10_000


@dataclass(frozen=True)
class SourceRule:
    department: str
    system: str  # "*": any system of the department
    policy: str  # refuse | flag

    @property
    def label(self) -> str:
        return f"{self.department}/{self.system}"

    def admits(self, department: str | None, departments: frozenset[str], system: str) -> bool:
        in_department = self.department == department or self.department in departments
        return in_department and self.system in (ANY, system)


@dataclass(frozen=True)
class Writer:
    """Who writes: the department(s) and system the write comes from, and the principal for the record."""

    department: str | None
    departments: frozenset[str]
    system: str
    principal: str

    @property
    def label(self) -> str:
        return f"{self.department or '-'}/{self.system}"


@dataclass(frozen=True)
class SourceConflict:
    tenant: str
    subject: str
    record: str
    field: str
    authority: str
    writer: str
    principal: str
    outcome: str  # refused | flagged


def writer_system(principal: Principal) -> str:
    """The system a principal writes from: devices from IoT, services (OAuth clients) by their name,
    people through the hub's API and pages."""
    if principal.kind == "device":
        return "iot"
    if principal.kind == "service":
        return principal.username or principal.id
    return "hub"


def refusal_reason(writer: Writer, refused: list[SourceConflict]) -> str:
    """The one message of a refused write, naming each field's authoritative source (the first five)."""
    fields = ", ".join(f"{c.field} (authoritative source {c.authority})" for c in refused[:5])
    return f"一数一源: {writer.label} is not the authoritative source of {fields}; write it at its source"


_flagged: ContextVar[list[SourceConflict] | None] = ContextVar("cityos_hub_source_flags", default=None)


class SourceGuard(Protocol):
    """The caller's 一数一源 check, for writes that do not go through the hub service's change pipeline
    (the temporal API writes history rows directly): `check` judges a change naming the written
    attributes; `committed` hands the flags of committed records to the data domain."""

    def check_sources(self, change: Any) -> str | None: ...

    def sources_committed(self, entity_ids: set[str]) -> None: ...


# Set per request next to the write guard (cityos.hub.access).
source_guard: ContextVar[SourceGuard | None] = ContextVar("cityos_hub_source_guard", default=None)


class SourcePolicies:
    def __init__(self) -> None:
        # tenant → subject (entity type IRI) → field (attribute IRI or "*") → rule
        self.rules: dict[str, dict[str, dict[str, SourceRule]]] = {}
        self.refused: deque[SourceConflict] = deque(maxlen=MAX_QUEUED)
        # Flags of committed writes outside the change pipeline (temporal), stored by the data domain.
        self.flagged: deque[SourceConflict] = deque(maxlen=MAX_QUEUED)

    def replace(self, rules: dict[str, dict[str, dict[str, SourceRule]]]) -> None:
        self.rules = rules

    def declared(self, tenant: str, subject: str) -> dict[str, SourceRule]:
        return self.rules.get(tenant, {}).get(subject, {})

    def check(self, tenant: str, principal: Principal | None, change: Any) -> str | None:
        """The refusal reason for this change, or None (flags are kept for the commit's listener)."""
        after = change.after
        if principal is None or after is None or tenant not in self.rules:
            return None
        by_subject = self.rules[tenant]
        subjects = [t for t in after.types if t in by_subject]
        if not subjects:
            return None
        written = set(change.changed_attrs) if change.before is not None else set(after.attrs)
        writer = Writer(principal.department, principal.departments, writer_system(principal), principal.label)
        refusals: list[SourceConflict] = []
        flags: list[SourceConflict] = []
        for subject in subjects:
            refused, flagged = self.judge(tenant, subject, change.entity_id, written, writer)
            refusals.extend(refused)
            flags.extend(flagged)
        if refusals:
            # The refusal rolls the write back, so it is queued for the data domain now.
            self.refused.extend(refusals)
            return refusal_reason(writer, refusals)
        # A refused change is not written: its other attributes' flags would list a write that never
        # happened (and be taken by a later commit of the same entity), so flags are held only here.
        self.hold(flags)
        return None

    def judge(self, tenant: str, subject: str, record: str, attrs: Iterable[str],
              writer: Writer) -> tuple[list[SourceConflict], list[SourceConflict]]:
        """(refused, flagged) attributes of one write of `record` (of type `subject`) by `writer`; pure. The
        caller queues the refusals (`refused`) and holds the flags (`hold`) once it knows what happens to
        the write, so a retried transaction lists nothing twice."""
        rules = self.declared(tenant, subject)
        if not rules:
            return [], []
        refused: list[SourceConflict] = []
        flagged: list[SourceConflict] = []
        for attr in sorted(attrs):
            rule = rules.get(attr) or rules.get(ANY)
            if rule is None or rule.admits(writer.department, writer.departments, writer.system):
                continue
            outcome = "refused" if rule.policy == REFUSE else "flagged"
            conflict = SourceConflict(tenant, subject, record, attr, rule.label, writer.label, writer.principal,
                                      outcome)
            (refused if rule.policy == REFUSE else flagged).append(conflict)
        return refused, flagged

    def hold(self, flags: list[SourceConflict]) -> None:
        """Keep flags for the commit's listener, which stores those of the records that commit."""
        if not flags:
            return
        pending = _flagged.get()
        if pending is None:
            pending = []
            _flagged.set(pending)
        # A batch's change is guarded twice (per entity, then with the whole write): one flag each.
        pending.extend(f for f in flags if f not in pending)

    def take_flagged(self, entity_ids: set[str]) -> list[SourceConflict]:
        """The flags of these committed changes (called by the commit's listener)."""
        pending = _flagged.get()
        if not pending:
            return []
        mine = [c for c in pending if c.record in entity_ids]
        pending[:] = [c for c in pending if c.record not in entity_ids]
        return mine

    def forget_held(self) -> None:
        """Drop flags held for writes that changed nothing (a reading already stored) or did not commit."""
        pending = _flagged.get()
        if pending:
            pending.clear()

    def settle_flagged(self, entity_ids: set[str]) -> None:
        """These records committed outside the change pipeline: queue their flags for storing."""
        self.flagged.extend(self.take_flagged(entity_ids))

    def take_refused(self) -> list[SourceConflict]:
        out = list(self.refused)
        self.refused.clear()
        return out

    def take_settled_flags(self) -> list[SourceConflict]:
        out = list(self.flagged)
        self.flagged.clear()
        return out
