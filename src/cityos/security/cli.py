"""`cityos user …`, `cityos client …`, `cityos keys …`, `cityos audit …` (mounted by `cityos.cli`).

The CLI is the installation's root path (it runs with the database credentials on the server):
it creates the first administrator (and prints the break-glass recovery code once), and its
actions are audited with the actor `cli`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cityos.config import Settings
from cityos.core.db import create_engine
from cityos.security.accounts import AccountService
from cityos.security.approvals import ApprovalService
from cityos.security.audit import AuditLog
from cityos.security.audit_anchor import checkpoint_store, verify_anchored, write_checkpoint
from cityos.security.crypto import load_keyring, reencrypt
from cityos.security.policy import USER_ROLES, Principal
from cityos.security.service import SecurityService
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import TokenIssuer, load_signing_keys

console = Console()
user_app = typer.Typer(help="Users and roles", no_args_is_help=True)
keys_app = typer.Typer(help="Field-encryption keys", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail", no_args_is_help=True)
client_app = typer.Typer(help="OAuth clients (client_credentials)", no_args_is_help=True)
T = TypeVar("T")


@asynccontextmanager
async def security_service() -> AsyncIterator[SecurityService]:
    settings = SecuritySettings()
    engine = create_engine(Settings())
    try:
        yield SecurityService(engine, settings, TokenIssuer(settings, load_signing_keys(settings)),
                              load_keyring(settings), AuditLog(engine))
    finally:
        await engine.dispose()


def _run(fn: Callable[[SecurityService], Awaitable[T]]) -> T:
    async def main() -> T:
        async with security_service() as service:
            return await fn(service)

    return asyncio.run(main())


CLI = Principal(id="cli", kind="service", role="sys_admin", username="cli")


@user_app.command("add")
def user_add(
    username: str,
    role: str = typer.Option("citizen", help=f"one of {', '.join(USER_ROLES)}"),
    tenant: str = typer.Option("", help="NGSI-LD tenant"),
    department: str | None = typer.Option(None),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    totp: bool = typer.Option(False, help="enrol TOTP now and print the otpauth URI once"),
) -> None:
    """Create a user (the first administrator is created here; later ones need a two-person approval)."""
    from cityos.security.models import users
    from cityos.security.policy import ADMIN_ROLES

    async def add(service: SecurityService) -> Any:
        recovery = None
        if role in ADMIN_ROLES:
            from sqlalchemy import func, select

            async with service.engine.connect() as conn:
                admins = (await conn.execute(select(func.count()).select_from(users)
                                             .where(users.c.role.in_(ADMIN_ROLES)))).scalar_one()
            if admins:
                raise typer.BadParameter("an administrator exists: the first administrator nominates the next "
                                         "(POST /auth/approvals, kind create_user or assign_admin_role) and a "
                                         "second person approves (a dept_admin, or `cityos user approve "
                                         "--recovery-code`)")
        new = await service.create_user(username, password, role, tenant=tenant, department=department,
                                        with_totp=totp, by=CLI, allow_admin=True)
        if role == "sys_admin":
            recovery = await AccountService(service).create_recovery_code(by=CLI)
        return new, recovery

    new, recovery = _run(add)
    console.print(f"[green]user {new.username} created[/green] (id {new.id})")
    if new.totp_secret:
        console.print(f"TOTP (shown once): {new.totp_uri()}")
    if recovery:
        console.print(f"Break-glass recovery code (shown once; keep it offline, e.g. in a sealed envelope): "
                      f"{recovery}")


def _accounts(fn: Callable[[AccountService], Awaitable[T]]) -> T:
    return _run(lambda service: fn(AccountService(service)))


@user_app.command("disable")
def user_disable(username: str, reason: str = typer.Option("", help="why (audited)")) -> None:
    """Disable an account; its sessions are revoked at once."""
    _accounts(lambda a: a.disable(username, by=CLI, reason=reason))
    console.print(f"[green]{username} disabled[/green]")


@user_app.command("enable")
def user_enable(username: str) -> None:
    """Enable a disabled account."""
    _accounts(lambda a: a.enable(username, by=CLI))
    console.print(f"[green]{username} enabled[/green]")


@user_app.command("set-role")
def user_set_role(username: str, role: str = typer.Argument(..., help=f"one of {', '.join(USER_ROLES)}"),
                  department: str | None = typer.Option(None, help="the department (omit: none)")) -> None:
    """Change a non-administrator role and department (administrator roles need a two-person approval)."""
    from cityos.security.policy import ADMIN_ROLES

    if role in ADMIN_ROLES:
        raise typer.BadParameter("administrator roles need a two-person approval (assign_admin_role)")
    _accounts(lambda a: a.set_role(username, role, by=CLI, allow_admin=True, department=department))
    console.print(f"[green]{username} is now {role}[/green]")


@user_app.command("reset-totp")
def user_reset_totp(username: str) -> None:
    """Forget a user's TOTP; prints the one-time enrolment code for the new one."""
    code = _accounts(lambda a: a.reset_totp(username, by=CLI))
    console.print(f"enrolment code (shown once, until {code['expires_at']}): {code['enrolment_code']}")


@user_app.command("approve")
def user_approve(approval: str = typer.Argument(..., help="id of a pending role appointment"),
                 recovery_code: str = typer.Option(..., prompt=True, hide_input=True)) -> None:
    """Break-glass: approve a role appointment with the offline recovery code (spent once)."""

    async def approve(service: SecurityService) -> Any:
        return await ApprovalService(service).approve_with_recovery_code(approval, recovery_code)

    item = _run(approve)
    console.print(f"[green]approval {item['id']} is {item['status']}[/green]; the requester executes it")


@client_app.command("add")
def client_add(client_id: str, role: str = typer.Option("operator"), tenant: str = typer.Option(""),
               department: str | None = typer.Option(None),
               secret_only: bool = typer.Option(False, "--secret-only",
                                                help="print only the secret (for SECRET=$(cityos client add …))")
               ) -> None:
    """Create an OAuth client; prints its secret once."""
    secret = _accounts(lambda a: a.create_client(client_id, role, tenant=tenant, department=department, by=CLI))
    if secret_only:
        print(secret)
        return
    console.print(f"[green]client {client_id} created[/green]; secret (shown once): {secret}")


@client_app.command("list")
def client_list(tenant: str | None = typer.Option(None)) -> None:
    """List OAuth clients (no secrets)."""
    rows = _accounts(lambda a: a.list_clients(tenant))
    table = Table("client id", "role", "tenant", "department", "created", "disabled")
    for r in rows:
        table.add_row(r["client_id"], r["role"], r["tenant"], r["department"] or "", r["created_at"],
                      "yes" if r["disabled"] else "")
    console.print(table)


@client_app.command("disable")
def client_disable(client_id: str) -> None:
    """Disable an OAuth client; its tokens stop working at once."""
    _accounts(lambda a: a.disable_client(client_id, by=CLI))
    console.print(f"[green]client {client_id} disabled[/green]")


@user_app.command("list")
def user_list(tenant: str | None = typer.Option(None)) -> None:
    """List users (no secrets)."""
    rows = _run(lambda s: s.list_users(tenant))
    table = Table("username", "role", "tenant", "department", "totp", "locked until", "disabled")
    for r in rows:
        table.add_row(r["username"], r["role"], r["tenant"], r["department"] or "", "yes" if r["totp_enabled"] else "",
                      str(r["locked_until"] or ""), str(r["disabled_at"] or "yes") if r["disabled"] else "")
    console.print(table)


@user_app.command("unlock")
def user_unlock(username: str) -> None:
    """Unlock an account locked by failed logins."""
    _accounts(lambda a: a.unlock(username, by=CLI))
    console.print(f"[green]{username} unlocked[/green]")


@keys_app.command("rotate")
def keys_rotate(approval: str = typer.Option(..., help="id of an approved rotate_keys request"),
                batch: int = typer.Option(500, help="rows re-encrypted per transaction")) -> None:
    """Execute an approved key rotation: new active key (file-backed ring), re-encrypt in batches."""

    async def rotate(service: SecurityService) -> Any:
        approvals = ApprovalService(service)
        item = await approvals.get(approval)
        if item["kind"] != "rotate_keys":
            raise typer.BadParameter("not a rotate_keys approval")
        user = await _user_by_id(service, item["requested_by"])
        requester = Principal(id=user["id"], role=user["role"], tenant=user["tenant"], username=user["username"])
        return await approvals.execute(requester, approval)

    result = _run(rotate)
    console.print_json(json.dumps(result, default=str))


@keys_app.command("reencrypt")
def keys_reencrypt(batch: int = typer.Option(500)) -> None:
    """Re-encrypt values still under an old key with the active key (after changing CITYOS_DATA_KEYS)."""

    async def run(service: SecurityService) -> Any:
        return await reencrypt(service.engine, service.keyring, batch,
                               progress=lambda name, n: console.print(f"{name}: {n}"))

    report = _run(run)
    console.print(f"active key {report.active}: {report.rewritten}")


async def _user_by_id(service: SecurityService, user_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from cityos.security.models import users

    async with service.engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().first()
    if row is None:
        raise typer.BadParameter("the requester no longer exists")
    return dict(row)


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the hash chain and check it against the newest signed checkpoint (CITYOS_AUDIT_CHECKPOINT_FILE);
    report the first altered, inserted or deleted record, or a truncated tail (exit 1 if any)."""
    report = _run(lambda s: verify_anchored(s.audit, checkpoint_store(s.settings)))
    console.print_json(json.dumps(report.to_json()))
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's current head and append it to the checkpoint file now (e.g. from cron)."""
    written = _run(lambda s: write_checkpoint(s.engine, checkpoint_store(s.settings)))
    console.print_json(json.dumps(asdict(written) if written is not None else {"written": False,
                                                                                 "reason": "the chain is empty"}))
