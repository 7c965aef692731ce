"""Pluggable payment providers for pay-without-stopping (无感支付).

A provider charges the account bound to a plate (e.g. a bank's or a wallet's 无感支付 contract) and
refunds a charge. The session id is the idempotency key: charging the same session twice returns the
first charge. `SandboxPaymentProvider` is an in-process ledger for tests, the demo and benchmarks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PaymentResult:
    ok: bool
    reference: str | None = None
    error: str | None = None


class PaymentProvider(Protocol):
    name: str

    async def charge(self, tenant: str, session_id: str, plate: str, amount: int) -> PaymentResult: ...

    async def refund(self, tenant: str, reference: str, amount: int) -> PaymentResult: ...


@dataclass
class SandboxPaymentProvider:
    """Accepts every charge except for plates in `declined`; keeps a ledger (reference → net amount)."""

    name: str = "sandbox"
    declined: set[str] = field(default_factory=set)
    ledger: dict[str, int] = field(default_factory=dict)
    by_session: dict[tuple[str, str], str] = field(default_factory=dict)

    async def charge(self, tenant: str, session_id: str, plate: str, amount: int) -> PaymentResult:
        if amount <= 0:
            return PaymentResult(False, error="amount must be positive")
        if plate in self.declined:
            return PaymentResult(False, error="no 无感支付 contract for this plate")
        known = self.by_session.get((tenant, session_id))
        if known is not None:
            return PaymentResult(True, known)
        reference = f"sbx-{uuid.uuid4().hex[:12]}"
        self.by_session[(tenant, session_id)] = reference
        self.ledger[reference] = amount
        return PaymentResult(True, reference)

    async def refund(self, tenant: str, reference: str, amount: int) -> PaymentResult:
        balance = self.ledger.get(reference)
        if balance is None:
            return PaymentResult(False, error="unknown charge")
        if not 0 < amount <= balance:
            return PaymentResult(False, error="refund exceeds the charge")
        self.ledger[reference] = balance - amount
        return PaymentResult(True, f"{reference}-r{uuid.uuid4().hex[:6]}")
