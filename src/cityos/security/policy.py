"""Access control: the one place that decides who may do what, and who sees which data class.

Everything here is pure (no I/O): a `Principal`, an action and a `Resource` go in, a `Decision`
comes out. The role × action matrix (`MATRIX`) and the data-class visibility table
(`VISIBILITY`) are declared as data, so that tests are generated from them and an auditor can
read them.

Scopes (how far a role's permission for an action reaches):

- ``public``: anyone, anonymous too (only public data classes survive masking);
- ``own``: resources whose ``owner`` is the principal;
- ``department``: resources of the principal's department or a department below it, or, for a
  resource with no department, one located in one of the department's districts. A resource with
  neither department nor district is not department-bound and matches;
- ``tenant``: anything in the principal's tenant;
- ``all``: every tenant (sys_admin only).

Outside ``all`` the resource's tenant must be the principal's tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

PrincipalKind = Literal["user", "service", "device"]


class Role(StrEnum):
    CITIZEN = "citizen"
    ENTERPRISE = "enterprise"
    OFFICIAL = "official"
    OPERATOR = "operator"
    DEPT_ADMIN = "dept_admin"
    AUDITOR = "auditor"
    SYS_ADMIN = "sys_admin"
    # Not assignable to users: the role a device principal carries.
    DEVICE = "device"


ANONYMOUS = "anonymous"
USER_ROLES: tuple[str, ...] = tuple(r.value for r in Role if r is not Role.DEVICE)
ADMIN_ROLES = frozenset({Role.DEPT_ADMIN.value, Role.SYS_ADMIN.value})
# Roles that must present a TOTP code at the password grant.
TOTP_ROLES = frozenset({Role.OFFICIAL.value, Role.OPERATOR.value, Role.DEPT_ADMIN.value, Role.AUDITOR.value,
                        Role.SYS_ADMIN.value})
# Roles bound to a department: the only ones a dept_admin may give, inside its own departments.
DEPARTMENT_ROLES = frozenset({Role.OFFICIAL.value})
# Roles acting across the whole tenant: appointed by the sys_admin plus a second person (三权分立:
# the administrator does not appoint the auditor alone). An official without a department too.
TENANT_WIDE_ROLES = frozenset({Role.OPERATOR.value, Role.AUDITOR.value})
STAFF_ROLES = frozenset({Role.OFFICIAL.value, Role.OPERATOR.value, Role.DEPT_ADMIN.value, Role.AUDITOR.value,
                         Role.SYS_ADMIN.value})


class Scope(StrEnum):
    NONE = "none"
    PUBLIC = "public"
    OWN = "own"
    DEPARTMENT = "department"
    TENANT = "tenant"
    ALL = "all"


ACTIONS: tuple[str, ...] = (
    "entity.read",             # NGSI-LD queries, retrieval, temporal reads, notifications
    "entity.write",            # create / update / merge / batch upsert
    "entity.delete",
    "subscription.manage",
    "device.manage",           # IoT registry, provisioning, commands
    "telemetry.write",         # a device sending its own readings
    "audit.read",
    "audit.export",
    "user.read",
    "user.manage",             # create users, unlock accounts, assign department roles
    "user.disable",            # disable / enable an account (its sessions are revoked)
    "user.reset_totp",         # forget a user's TOTP (a new enrolment code is issued)
    "user.enrol",              # issue a one-time TOTP enrolment code
    "client.read",             # list OAuth clients
    "client.manage",           # create / disable OAuth clients (client_credentials)
    "role.assign_admin",       # give someone dept_admin or sys_admin (two-person)
    "role.assign_tenant_wide",  # give someone operator, auditor or a department-less role (two-person)
    "role.approve",            # be the second person of a role appointment
    "tenant.manage",
    "tenant.delete",           # two-person
    "keys.rotate",             # two-person
    "data.export_sensitive",   # bulk export with sensitive values in clear (two-person)
    "approval.request",
    "approval.decide",
    # 一网统管 (ops)
    "rule.read",
    "rule.manage",             # create / version / delete alarm rules
    "alarm.read",
    "alarm.act",               # acknowledge / clear
    "incident.read",
    "incident.create",         # hotline entries and manual incidents by staff
    "incident.act",            # dispatch, accept, on site, resolve, close, reopen, merge
    "report.submit",           # a citizen's report (Open311)
    "sla.manage",
    # 一网通办 (services)
    "service.read",            # the service catalogue and guides
    "service.manage",
    "application.submit",
    "application.read",
    "task.act",                # approve / reject / request supplement
    "licence.verify",
    "licence.revoke",
    "rating.submit",
    "supervision.read",        # overdue work, ratings and metrics dashboards
    "rectification.act",       # reply to a 整改 task opened by a bad rating
    # operations of the platform itself
    "platform.monitor",        # scrape /metrics (a Prometheus server uses CITYOS_METRICS_TOKEN instead)
    # 运营评估 (evaluation): aggregate indicators, no personal data
    "evaluation.read",         # indicators, radar, maturity, reports, the decision cockpit
    "evaluation.compute",      # recompute a period on demand
    "evaluation.assess",       # record a mystery-shopper visit
    # 智慧出行 (mobility)
    "mobility.read",           # feeds, stops, journey plans (public transport data is public)
    "mobility.manage",         # import or replace a GTFS feed
    # NGSI-LD Context Source registrations (hub federation)
    "csource.read",            # discover registrations and csource subscriptions
    "csource.manage",          # register / change / delete context sources and csource subscriptions
    # 城市底图 (web map): the base map's vector tiles are geography, public like the service catalogue
    "map.read",
    # citizens' accounts (services/registration): self-registration and password reset by phone code
    "account.register",        # register a citizen or company account (real-name checks, phone code)
    "account.recover",         # reset one's own password with a phone code
    # 数据资源 (data: catalogue, open data, sharing)
    "data.catalogue.read",     # the whole catalogue (open or not), fields with classes, versions, usage
    "data.catalogue.manage",   # harvest the hub into the catalogue now
    "data.register",           # a department registers its own dataset
    "data.key.manage",         # issue / revoke API keys for conditional open datasets, decide applications
    "data.key.apply",          # an outside developer applies for a key (purpose, rate) and claims it
    "data.share.request",      # a department asks another's dataset (purpose, fields, pledge)
    "data.share.decide",       # the owning department approves, narrows, rejects, revokes
    "data.share.read",         # read rows under a grant of one's department
    "data.negative.manage",    # the negative list (负面清单)
    "data.quality.manage",     # run quality checks, release quarantined records
    # 智慧交通 (traffic): signal control
    "traffic.read",            # signals, their plans, states and phase commands; controller advice
    "traffic.manage",          # register a signal and its plan
    "traffic.control",         # command a phase (through the safety layer) or apply a controller's decision
)

# 数据资源 (data): who reads the catalogue, registers datasets, manages open-data keys.
DATA_ROWS: dict[str, dict[str, Scope]] = {
    "official": {"data.catalogue.read": Scope.TENANT, "data.register": Scope.DEPARTMENT,
                 "data.share.request": Scope.DEPARTMENT, "data.share.decide": Scope.DEPARTMENT,
                 "data.share.read": Scope.DEPARTMENT},
    "operator": {"data.catalogue.read": Scope.TENANT, "data.catalogue.manage": Scope.TENANT,
                 "data.key.manage": Scope.TENANT, "data.negative.manage": Scope.TENANT,
                 "data.quality.manage": Scope.TENANT},
    "dept_admin": {"data.catalogue.read": Scope.TENANT, "data.register": Scope.DEPARTMENT,
                   "data.key.manage": Scope.TENANT, "data.share.request": Scope.DEPARTMENT,
                   "data.share.decide": Scope.DEPARTMENT, "data.share.read": Scope.DEPARTMENT},
    "auditor": {"data.catalogue.read": Scope.TENANT},
    "sys_admin": {"data.catalogue.read": Scope.ALL, "data.catalogue.manage": Scope.ALL, "data.key.manage": Scope.ALL,
                  "data.negative.manage": Scope.ALL, "data.quality.manage": Scope.ALL},
}

# Actions that, once authorised, still need a second person's approval (双人双锁).
TWO_PERSON_ACTIONS = frozenset({"data.export_sensitive", "tenant.delete", "keys.rotate", "role.assign_admin",
                                "role.assign_tenant_wide"})

_N, _P, _O, _D, _T, _A = Scope.NONE, Scope.PUBLIC, Scope.OWN, Scope.DEPARTMENT, Scope.TENANT, Scope.ALL

# role → action → scope. An action missing from a role's row is Scope.NONE.
MATRIX: dict[str, dict[str, Scope]] = {
    ANONYMOUS: {"entity.read": _P, "report.submit": _P, "service.read": _P, "licence.verify": _P,
                "mobility.read": _P},
    Role.CITIZEN: {"entity.read": _T, "entity.write": _O, "incident.read": _O, "report.submit": _T,
                   "service.read": _T, "application.submit": _O, "application.read": _O, "licence.verify": _T,
                   "rating.submit": _O, "mobility.read": _T},
    Role.ENTERPRISE: {"entity.read": _T, "entity.write": _O, "incident.read": _O, "report.submit": _T,
                      "service.read": _T, "application.submit": _O, "application.read": _O,
                      "licence.verify": _T, "rating.submit": _O, "mobility.read": _T},
    Role.OFFICIAL: {"entity.read": _T, "entity.write": _D, "entity.delete": _D, "subscription.manage": _D,
                    "data.export_sensitive": _D, "approval.request": _D,
                    "rule.read": _T, "alarm.read": _T, "alarm.act": _D, "incident.read": _D, "incident.create": _D,
                    "incident.act": _D, "report.submit": _T, "service.read": _T, "application.read": _D,
                    "task.act": _D, "licence.verify": _T, "licence.revoke": _D, "rectification.act": _D,
                    "mobility.read": _T},
    Role.OPERATOR: {"entity.read": _T, "entity.write": _T, "subscription.manage": _T, "device.manage": _T,
                    "approval.request": _T,
                    "rule.read": _T, "rule.manage": _T, "alarm.read": _T, "alarm.act": _T, "incident.read": _T,
                    "incident.create": _T, "incident.act": _T, "report.submit": _T, "sla.manage": _T,
                    "service.read": _T, "licence.verify": _T, "platform.monitor": _T,
                    "evaluation.read": _T, "evaluation.compute": _T, "evaluation.assess": _T,
                    "mobility.read": _T, "mobility.manage": _T,
                    "traffic.read": _T, "traffic.manage": _T, "traffic.control": _T},
    Role.DEPT_ADMIN: {"entity.read": _T, "entity.write": _D, "entity.delete": _D, "subscription.manage": _D,
                      "device.manage": _D, "user.read": _D, "user.manage": _D, "user.disable": _D,
                      "user.reset_totp": _D, "user.enrol": _D, "data.export_sensitive": _D,
                      "approval.request": _D, "approval.decide": _D, "role.approve": _T,
                      "rule.read": _T, "rule.manage": _D, "alarm.read": _T, "alarm.act": _D, "incident.read": _D,
                      "incident.create": _D, "incident.act": _D, "report.submit": _T, "sla.manage": _D,
                      "service.read": _T, "service.manage": _D, "application.read": _D, "task.act": _D,
                      "licence.verify": _T, "licence.revoke": _D, "supervision.read": _D,
                      "rectification.act": _D, "evaluation.read": _T, "mobility.read": _T,
                      "traffic.read": _T},
    # Separation of duties (三权分立): the auditor reads the audit trail and nothing is written by it;
    # the system administrator administers but cannot read the audit trail.
    Role.AUDITOR: {"entity.read": _T, "audit.read": _T, "audit.export": _T, "user.read": _T,
                   "rule.read": _T, "alarm.read": _T, "incident.read": _T, "service.read": _T,
                   "application.read": _T, "licence.verify": _T, "supervision.read": _T,
                   "evaluation.read": _T, "mobility.read": _T, "traffic.read": _T},
    Role.SYS_ADMIN: {"entity.read": _A, "entity.write": _A, "entity.delete": _A, "subscription.manage": _A,
                     "device.manage": _A, "user.read": _A, "user.manage": _A, "user.disable": _A,
                     "user.reset_totp": _A, "user.enrol": _A, "client.read": _A, "client.manage": _A,
                     "role.assign_admin": _A, "role.assign_tenant_wide": _A, "role.approve": _A,
                     "tenant.manage": _A, "tenant.delete": _A, "keys.rotate": _A, "approval.request": _A,
                     "approval.decide": _A,
                     "rule.read": _A, "rule.manage": _A, "alarm.read": _A, "alarm.act": _A, "incident.read": _A,
                     "incident.create": _A, "incident.act": _A, "sla.manage": _A, "service.read": _A,
                     "service.manage": _A, "application.read": _A, "licence.verify": _A, "licence.revoke": _A,
                     "supervision.read": _A, "platform.monitor": _A,
                     "evaluation.read": _A, "evaluation.compute": _A, "evaluation.assess": _A,
                     "mobility.read": _A, "mobility.manage": _A,
                     "traffic.read": _A, "traffic.manage": _A, "traffic.control": _A},
    Role.DEVICE: {"telemetry.write": _O},
}
# 城市底图 (web map): anyone may read the base map's tiles; every signed-in role too (devices excepted).
for _role, _row in MATRIX.items():
    if _role != Role.DEVICE:
        _row["map.read"] = _P if _role == ANONYMOUS else _T

# NGSI-LD Context Source registrations (hub federation): registering a source redirects queries and
# writes of the whole tenant, so only tenant-wide operators and the system administrator manage them.
for _role, _rights in ((Role.OPERATOR, {"csource.read": _T, "csource.manage": _T}),
                       (Role.SYS_ADMIN, {"csource.read": _A, "csource.manage": _A}),
                       (Role.DEPT_ADMIN, {"csource.read": _T}), (Role.OFFICIAL, {"csource.read": _T}),
                       (Role.AUDITOR, {"csource.read": _T})):
    MATRIX[_role].update(_rights)


def _grant(grants: dict[str, dict[str, Scope]]) -> None:
    """Add a domain's rows to MATRIX (each domain states its actions in one block below)."""
    for role, actions in grants.items():
        MATRIX.setdefault(role, {}).update(actions)


# 一网协同 II (livelihood): appointments (预约), the service hall (智慧大厅), waste sorting (垃圾分类),
# the citizens' council (市民议事厅), community services (社区)
ACTIONS += (
    "appointment.read",        # bookable services and free slots (public)
    "appointment.book",        # book, cancel, reschedule one's own appointments; waiting lists
    "appointment.manage",      # schedules, slots, a site's list, outcomes (came / no-show)
    "hall.read",               # the hall's queues, the call screen, wait predictions (public)
    "hall.ticket",             # take a ticket online
    "hall.operate",            # window staff: tickets at the desk, call next, transfer, no-show, done; planning
    "waste.read",              # reward catalogue, participation and accuracy per community (aggregates, public)
    "waste.own",               # a resident's card, points and redemptions
    "waste.deposit",           # the bins' system (an OAuth client) or an attendant records and checks deposits
    "waste.manage",            # issue cards to residents, the reward catalogue
    "waste.collect",           # the sanitation department's collection tasks from full bins
    "council.read",            # proposals, results after the close, comments (public)
    "council.participate",     # propose, comment, vote (verified residents of the community; checked in the service)
    "council.manage",          # verify residents, moderate with a reason (the community office)
    "community.report",        # a resident's repairs (一键报修), confirmations, ratings, notices meant for them
    "community.manage",        # the community office / property company: residents, work orders, notices
    "community.plan",          # the 15-minute living circle: reach and gaps per community (public, no personal data)
)
_STAFF_LIVELIHOOD_II = {"appointment.read": _T, "appointment.manage": _D, "hall.read": _T, "hall.ticket": _T,
                        "hall.operate": _D, "waste.read": _T, "waste.deposit": _T, "waste.manage": _T,
                        "waste.collect": _D, "council.read": _T, "council.manage": _T, "community.manage": _T,
                        "community.report": _T, "community.plan": _T}
_grant({
    ANONYMOUS: {"appointment.read": _P, "hall.read": _P, "waste.read": _P, "council.read": _P,
                "community.plan": _P},
    Role.CITIZEN: {"appointment.read": _T, "appointment.book": _O, "hall.read": _T, "hall.ticket": _O,
                   "waste.read": _T, "waste.own": _O, "council.read": _T, "council.participate": _T,
                   "community.report": _T, "community.plan": _T},
    Role.ENTERPRISE: {"appointment.read": _T, "appointment.book": _O, "hall.read": _T, "hall.ticket": _O,
                      "waste.read": _T, "council.read": _T, "community.plan": _T},
    Role.OFFICIAL: _STAFF_LIVELIHOOD_II,
    Role.DEPT_ADMIN: _STAFF_LIVELIHOOD_II,
    Role.OPERATOR: {"appointment.read": _T, "hall.read": _T, "waste.read": _T, "council.read": _T,
                    "community.plan": _T},
    Role.AUDITOR: {"appointment.read": _T, "hall.read": _T, "waste.read": _T, "council.read": _T,
                   "community.plan": _T},
    Role.SYS_ADMIN: {"appointment.read": _A, "appointment.manage": _A, "hall.read": _A, "hall.ticket": _A,
                     "hall.operate": _A, "waste.read": _A, "waste.deposit": _A, "waste.manage": _A,
                     "waste.collect": _A, "council.read": _A, "council.manage": _A, "community.manage": _A,
                     "community.report": _A, "community.plan": _A},
})

# ---- 一网协同 (livelihood): actions and grants, kept in this one block.
LIVELIHOOD_ACTIONS: tuple[str, ...] = (
    "livelihood.record.publish",   # a department shares records of people and companies (and life events)
    "livelihood.profile.read",     # a profile, masked by data class and owning department
    "livelihood.policy.read",      # the policy catalogue (policies are public documents)
    "livelihood.policy.manage",    # a new policy or version (re-evaluates everyone)
    "livelihood.services.read",    # "services for me": one's own decisions and why
    "livelihood.confirm",          # one-click confirmation, opt-out, objection to one's own payout
    "livelihood.payout.read",
    "livelihood.payout.approve",   # a supervisor's approval above the threshold
    "livelihood.uptake.read",      # uptake, reach and refusals per policy (aggregate, no personal data)
    "livelihood.care.read",        # the care roster, alerts and visits
    "livelihood.care.act",         # acknowledge an alert, record a visit or a note
    "livelihood.care.manage",      # enrol a person, set the escalation chain
    "livelihood.reading.write",    # readings of wristbands, gas, smoke and door sensors
    "livelihood.finance.read",     # 融资对接: banks' loan products (public listings)
    "livelihood.finance.need",     # a company posts its financing needs, sees its matches, asks for contact
    "livelihood.finance.product.manage",  # a bank's or the financial office's staff publish loan products
    "livelihood.finance.broker",   # needs matched to the department's products, and the contacts asked
)
ACTIONS = ACTIONS + LIVELIHOOD_ACTIONS
_LIVELIHOOD_GRANTS: dict[str, dict[str, Scope]] = {
    ANONYMOUS: {"livelihood.policy.read": _P, "livelihood.finance.read": _P},
    Role.CITIZEN: {"livelihood.policy.read": _T, "livelihood.services.read": _O, "livelihood.confirm": _O,
                   "livelihood.care.act": _O, "livelihood.finance.read": _T},
    Role.ENTERPRISE: {"livelihood.policy.read": _T, "livelihood.services.read": _O, "livelihood.confirm": _O,
                      "livelihood.finance.read": _T, "livelihood.finance.need": _O},
    Role.OFFICIAL: {"livelihood.record.publish": _D, "livelihood.profile.read": _D, "livelihood.policy.read": _T,
                    "livelihood.policy.manage": _D, "livelihood.payout.read": _D, "livelihood.uptake.read": _D,
                    "livelihood.care.read": _D, "livelihood.care.act": _D, "livelihood.care.manage": _D,
                    # a bank's staff are officials of the bank's department (below the financial office's):
                    # they publish their own products and see the contacts asked about them
                    "livelihood.finance.read": _T, "livelihood.finance.product.manage": _D,
                    "livelihood.finance.broker": _D},
    Role.OPERATOR: {"livelihood.record.publish": _T, "livelihood.profile.read": _T, "livelihood.policy.read": _T,
                    "livelihood.payout.read": _T, "livelihood.uptake.read": _T, "livelihood.care.read": _T,
                    "livelihood.care.act": _T, "livelihood.care.manage": _T, "livelihood.reading.write": _T,
                    "livelihood.finance.read": _T},
    Role.DEPT_ADMIN: {"livelihood.record.publish": _D, "livelihood.profile.read": _D, "livelihood.policy.read": _T,
                      "livelihood.policy.manage": _D, "livelihood.payout.read": _D, "livelihood.payout.approve": _D,
                      "livelihood.uptake.read": _D, "livelihood.care.read": _D, "livelihood.care.act": _D,
                      "livelihood.care.manage": _D, "livelihood.finance.read": _T,
                      "livelihood.finance.product.manage": _D, "livelihood.finance.broker": _D},
    Role.AUDITOR: {"livelihood.policy.read": _T, "livelihood.payout.read": _T, "livelihood.uptake.read": _T,
                   "livelihood.finance.read": _T, "livelihood.finance.broker": _T},
    Role.SYS_ADMIN: {action: _A for action in LIVELIHOOD_ACTIONS if action not in (
        "livelihood.services.read", "livelihood.confirm", "livelihood.finance.need")},
    Role.DEVICE: {"livelihood.reading.write": _O},
}
for _role, _grants in _LIVELIHOOD_GRANTS.items():
    MATRIX[_role] = {**MATRIX[_role], **_grants}
# ---- end of 一网协同 (livelihood)

# citizens' accounts (services/registration): anyone may register or recover an account; the
# service limits the rate and proves the phone.
MATRIX[ANONYMOUS].update({"account.register": _P, "account.recover": _P})

for _role, _row in DATA_ROWS.items():
    MATRIX[_role].update(_row)
# Anyone may apply for an open-data key, signed in or not (the data office decides).
MATRIX[ANONYMOUS]["data.key.apply"] = _P
for _role in USER_ROLES:
    MATRIX[_role]["data.key.apply"] = _T


# 智慧交通: parking (智慧停车) and the congestion index (拥堵指数)
ACTIONS += (
    "parking.read",            # car parks, live availability, tariffs, guidance (public)
    "parking.reserve",         # reserve, cancel, bind one's plates, one's sessions and bills, disputes
    "parking.gate",            # a car park's gate cameras / staff send plate events at entry and exit
    "parking.monitor",         # a car park's sessions with plates masked (粤B·***45)
    "parking.manage",          # register car parks, sessions in clear, refunds (the car park's department)
    "congestion.read",         # road segments' index, districts', the city's, history (public)
    "congestion.report",       # detector speed reports (the detectors' gateway, traffic staff)
    "congestion.manage",       # register road segments
    "congestion.forecast",     # the 15-minute forecast and diversion advice (public, like the index)
    "congestion.train",        # retrain the forecast model now (it also retrains hourly on its own)
)
_grant({
    ANONYMOUS: {"parking.read": _P, "congestion.read": _P, "congestion.forecast": _P},
    Role.CITIZEN: {"parking.read": _T, "parking.reserve": _O, "congestion.read": _T, "congestion.forecast": _T},
    Role.ENTERPRISE: {"parking.read": _T, "parking.reserve": _O, "congestion.read": _T,
                      "congestion.forecast": _T},
    Role.OFFICIAL: {"parking.read": _T, "parking.gate": _D, "parking.monitor": _T, "parking.manage": _D,
                    "congestion.read": _T, "congestion.report": _T, "congestion.manage": _T,
                    "congestion.forecast": _T, "congestion.train": _T},
    Role.DEPT_ADMIN: {"parking.read": _T, "parking.gate": _D, "parking.monitor": _T, "parking.manage": _D,
                      "congestion.read": _T, "congestion.report": _T, "congestion.manage": _T,
                      "congestion.forecast": _T, "congestion.train": _T},
    Role.OPERATOR: {"parking.read": _T, "parking.gate": _T, "parking.monitor": _T, "congestion.read": _T,
                    "congestion.report": _T, "congestion.manage": _T, "congestion.forecast": _T,
                    "congestion.train": _T},
    Role.AUDITOR: {"parking.read": _T, "parking.monitor": _T, "congestion.read": _T, "congestion.forecast": _T},
    Role.SYS_ADMIN: {"parking.read": _A, "parking.gate": _A, "parking.monitor": _A, "parking.manage": _A,
                     "congestion.read": _A, "congestion.report": _A, "congestion.manage": _A,
                     "congestion.forecast": _A, "congestion.train": _A},
})

# 阳光政务 (spending transparency): budgets are public by law; a department publishes only its own.
ACTIONS += (
    "transparency.read",       # budget and spending per department and year (public)
    "transparency.publish",    # publish or correct the department's budget lines
)
_grant({
    ANONYMOUS: {"transparency.read": _P},
    **{role: {"transparency.read": _T} for role in (Role.CITIZEN, Role.ENTERPRISE, Role.OPERATOR, Role.AUDITOR)},
    Role.OFFICIAL: {"transparency.read": _T, "transparency.publish": _D},
    Role.DEPT_ADMIN: {"transparency.read": _T, "transparency.publish": _D},
    Role.SYS_ADMIN: {"transparency.read": _A, "transparency.publish": _A},
})

class DataClass(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    SENSITIVE = "sensitive"
    CONFIDENTIAL = "confidential"


class Visibility(StrEnum):
    CLEAR = "clear"
    MASKED = "masked"
    HIDDEN = "hidden"


# Visibility rules: "clear", "masked", "hidden", or "dept:<in>/<out>": <in> when the data's owning
# department is one of the principal's departments, <out> otherwise. Confidential data never
# leaves its owning department; confidential data without an owning department is shown to nobody.
VISIBILITY: dict[str, dict[str, str]] = {
    DataClass.PUBLIC: {role: "clear" for role in (ANONYMOUS, *USER_ROLES, Role.DEVICE.value)},
    DataClass.INTERNAL: {ANONYMOUS: "hidden", Role.CITIZEN: "hidden", Role.ENTERPRISE: "hidden",
                         Role.DEVICE: "hidden", Role.OFFICIAL: "clear", Role.OPERATOR: "clear",
                         Role.DEPT_ADMIN: "clear", Role.AUDITOR: "clear", Role.SYS_ADMIN: "clear"},
    DataClass.SENSITIVE: {ANONYMOUS: "hidden", Role.CITIZEN: "hidden", Role.ENTERPRISE: "hidden",
                          Role.DEVICE: "hidden", Role.OFFICIAL: "dept:clear/masked",
                          Role.DEPT_ADMIN: "dept:clear/masked", Role.OPERATOR: "masked",
                          Role.AUDITOR: "masked", Role.SYS_ADMIN: "masked"},
    DataClass.CONFIDENTIAL: {ANONYMOUS: "hidden", Role.CITIZEN: "hidden", Role.ENTERPRISE: "hidden",
                             Role.DEVICE: "hidden", Role.OFFICIAL: "dept:clear/hidden",
                             Role.DEPT_ADMIN: "dept:clear/hidden", Role.OPERATOR: "hidden",
                             Role.AUDITOR: "hidden", Role.SYS_ADMIN: "hidden"},
}


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user, a service (OAuth client) or a device."""

    id: str
    kind: PrincipalKind = "user"
    role: str = Role.CITIZEN.value
    tenant: str = ""
    username: str | None = None
    department: str | None = None
    # The principal's department and every department below it.
    departments: frozenset[str] = field(default_factory=frozenset)
    districts: frozenset[str] = field(default_factory=frozenset)
    session: str | None = None  # refresh-token family (or jti) used for revocation
    mfa: bool = False

    @classmethod
    def device(cls, device_id: str, tenant: str = "", department: str | None = None,
               district: str | None = None) -> Principal:
        """The principal of a device authenticated by the IoT domain's device token."""
        return cls(id=device_id, kind="device", role=Role.DEVICE.value, tenant=tenant, department=department,
                   departments=frozenset({department}) if department else frozenset(),
                   districts=frozenset({district}) if district else frozenset())

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.username or self.id}"


@dataclass(frozen=True)
class Resource:
    """What is acted on. `kind` is informational; the action carries the permission."""

    kind: str = "entity"
    tenant: str = ""
    id: str | None = None
    department: str | None = None
    district: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    scope: Scope = Scope.NONE
    requires_approval: bool = False

    def __bool__(self) -> bool:
        return self.allowed


def role_of(principal: Principal | None) -> str:
    return principal.role if principal is not None else ANONYMOUS


def scope_for(role: str, action: str) -> Scope:
    return MATRIX.get(role, {}).get(action, Scope.NONE)


def in_department(principal: Principal, resource: Resource) -> bool:
    if resource.department is not None:
        return resource.department in principal.departments
    if resource.district is not None:
        return resource.district in principal.districts
    return True


def authorize(principal: Principal | None, action: str, resource: Resource) -> Decision:
    """May `principal` perform `action` on `resource`? Deny by default."""
    if action not in ACTIONS:
        return Decision(False, f"unknown action {action!r}")
    role = role_of(principal)
    scope = scope_for(role, action)
    approval = action in TWO_PERSON_ACTIONS
    if scope is Scope.NONE:
        return Decision(False, f"role {role} may not {action}", scope)
    if scope is Scope.PUBLIC:
        return Decision(True, "public", scope)
    assert principal is not None  # only the anonymous row has PUBLIC scopes
    if scope is Scope.ALL:
        return Decision(True, "all tenants", scope, approval)
    if resource.tenant != principal.tenant:
        return Decision(False, "resource is in another tenant", scope)
    if scope is Scope.TENANT:
        return Decision(True, "tenant", scope, approval)
    if scope is Scope.OWN:
        if resource.owner is not None and resource.owner == principal.id:
            return Decision(True, "owner", scope, approval)
        return Decision(False, "not the owner", scope)
    if in_department(principal, resource):
        return Decision(True, "department", scope, approval)
    return Decision(False, "outside the principal's department", scope)


def appointment_approval(role: str, department: str | None) -> str | None:
    """The two-person action that giving someone `role` (in `department`) needs, or None."""
    if role in ADMIN_ROLES:
        return "role.assign_admin"
    if role in TENANT_WIDE_ROLES or (role in DEPARTMENT_ROLES and department is None):
        return "role.assign_tenant_wide"
    return None


def may_manage_user(principal: Principal | None, action: str, tenant: str, role: str,
                    department: str | None) -> Decision:
    """May `principal` do `action` to (or give) an account of `role` in `department`?

    A department-scoped administrator reaches only department roles of its own departments: not
    administrators, operators, auditors, citizens, nor anyone without a department.
    """
    decision = authorize(principal, action, Resource("user", tenant, department=department))
    if decision and decision.scope is Scope.DEPARTMENT:
        assert principal is not None
        if role not in DEPARTMENT_ROLES or department is None or department not in principal.departments:
            return Decision(False, "a department administrator manages only department staff "
                                   f"({', '.join(sorted(DEPARTMENT_ROLES))}) of its own departments", decision.scope)
    return decision


def visible_class(principal: Principal | None, data_class: str, owning_department: str | None) -> Visibility:
    """How an attribute of `data_class` owned by `owning_department` is shown to `principal`."""
    rules = VISIBILITY.get(data_class)
    if rules is None:
        return Visibility.HIDDEN  # unknown class: fail closed
    rule = rules.get(role_of(principal), "hidden")
    if rule.startswith("dept:"):
        inside, outside = rule[5:].split("/")
        if principal is None or owning_department is None:
            rule = inside if data_class == DataClass.SENSITIVE and principal is not None else outside
        else:
            rule = inside if owning_department in principal.departments else outside
    return Visibility(rule)


def effective_tenant(principal: Principal | None, header_tenant: str | None) -> str:
    """The tenant a request acts in: the token's, unless a sys_admin names another.

    Raises PermissionError when a header names a tenant other than the one in the principal's
    signed claims (tenant header tampering).
    """
    if principal is None:
        return header_tenant or ""
    if header_tenant is None or header_tenant == principal.tenant:
        return principal.tenant
    if principal.role == Role.SYS_ADMIN:
        return header_tenant
    raise PermissionError(f"the token is for tenant {principal.tenant!r}, not {header_tenant!r}")


def roles_allowed(action: str) -> frozenset[str]:
    """The user roles that may perform `action` at all (for pages: who sees a page or a button)."""
    return frozenset(role for role in USER_ROLES if MATRIX.get(role, {}).get(action, Scope.NONE) is not Scope.NONE)
