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
)

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
                    "mobility.read": _T, "mobility.manage": _T},
    Role.DEPT_ADMIN: {"entity.read": _T, "entity.write": _D, "entity.delete": _D, "subscription.manage": _D,
                      "device.manage": _D, "user.read": _D, "user.manage": _D, "user.disable": _D,
                      "user.reset_totp": _D, "user.enrol": _D, "data.export_sensitive": _D,
                      "approval.request": _D, "approval.decide": _D, "role.approve": _T,
                      "rule.read": _T, "rule.manage": _D, "alarm.read": _T, "alarm.act": _D, "incident.read": _D,
                      "incident.create": _D, "incident.act": _D, "report.submit": _T, "sla.manage": _D,
                      "service.read": _T, "service.manage": _D, "application.read": _D, "task.act": _D,
                      "licence.verify": _T, "licence.revoke": _D, "supervision.read": _D,
                      "rectification.act": _D, "evaluation.read": _T, "mobility.read": _T},
    # Separation of duties (三权分立): the auditor reads the audit trail and nothing is written by it;
    # the system administrator administers but cannot read the audit trail.
    Role.AUDITOR: {"entity.read": _T, "audit.read": _T, "audit.export": _T, "user.read": _T,
                   "rule.read": _T, "alarm.read": _T, "incident.read": _T, "service.read": _T,
                   "application.read": _T, "licence.verify": _T, "supervision.read": _T,
                   "evaluation.read": _T, "mobility.read": _T},
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
                     "mobility.read": _A, "mobility.manage": _A},
    Role.DEVICE: {"telemetry.write": _O},
}


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
