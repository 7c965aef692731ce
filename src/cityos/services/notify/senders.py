"""Pluggable senders for the notification outbox.

A `Sender` delivers one `OutgoingMessage` on its channel or raises; the outbox retries.

- `SmtpEmailSender`: stdlib `smtplib` / `email` run in a worker thread (`asyncio.to_thread`;
  aiosmtplib is not a dependency). Settings from ``CITYOS_SMTP_HOST``, ``CITYOS_SMTP_PORT`` (25),
  ``CITYOS_SMTP_FROM``, optional ``CITYOS_SMTP_STARTTLS`` (1/true), ``CITYOS_SMTP_USER`` and
  ``CITYOS_SMTP_PASSWORD``. Without ``CITYOS_SMTP_HOST`` e-mail goes to `LogSender` (development).
- `LogSender` (SMS default, as `LogSmsSender`): writes the message to the log. A real SMS gateway
  (Aliyun / Tencent Cloud SMS, an operator's CMPP gateway) is out of scope: implement `Sender`
  with ``channel = "sms"`` and register it in `Notifier.senders`.
- `EmailSmsGateway`: SMS through an e-mail-to-SMS gateway (many SMS providers and operators take
  mail to ``<number>@<their domain>``): ``CITYOS_SMS_EMAIL_DOMAIN`` with the SMTP settings above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol, runtime_checkable

from cityos.config import env_float, env_int, env_optional
from cityos.core import clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    channel: str
    address: str
    subject: str
    body: str
    tenant: str = ""
    reference: str = field(default_factory=lambda: uuid.uuid4().hex)  # the outbox row / notification


@runtime_checkable
class Sender(Protocol):
    channel: str

    async def send(self, message: OutgoingMessage) -> None:
        """Deliver the message or raise (the outbox retries)."""
        ...


@dataclass(frozen=True)
class SmtpSettings:
    host: str | None = field(default_factory=lambda: env_optional("CITYOS_SMTP_HOST"))
    port: int = field(default_factory=lambda: env_int("CITYOS_SMTP_PORT", 25))
    from_addr: str = field(default_factory=lambda: os.environ.get("CITYOS_SMTP_FROM", "cityos@localhost"))
    starttls: bool = field(default_factory=lambda: os.environ.get("CITYOS_SMTP_STARTTLS", "").lower()
                           in ("1", "true", "yes"))
    user: str | None = field(default_factory=lambda: env_optional("CITYOS_SMTP_USER"))
    password: str | None = field(default_factory=lambda: env_optional("CITYOS_SMTP_PASSWORD"))
    timeout: float = field(default_factory=lambda: env_float("CITYOS_SMTP_TIMEOUT", 10.0))


class SmtpEmailSender:
    channel = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        if not settings.host:
            raise ValueError("SmtpEmailSender needs a host (CITYOS_SMTP_HOST)")
        self.settings = settings

    def build(self, message: OutgoingMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.settings.from_addr
        mail["To"] = message.address
        mail["Date"] = format_datetime(clock.now())
        mail["Message-ID"] = make_msgid(idstring=message.reference, domain="cityos")
        mail.set_content(message.body)  # UTF-8, so Chinese text survives
        return mail

    def _send_sync(self, mail: EmailMessage) -> None:
        s = self.settings
        assert s.host is not None
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout) as smtp:
            if s.starttls:
                smtp.starttls()
            if s.user:
                smtp.login(s.user, s.password or "")
            smtp.send_message(mail)

    async def send(self, message: OutgoingMessage) -> None:
        await asyncio.to_thread(self._send_sync, self.build(message))


class LogSender:
    """Writes messages to the log and keeps the last few in memory (`recent`) for operators."""

    def __init__(self, channel: str, keep: int = 100) -> None:
        self.channel = channel
        self.recent: deque[OutgoingMessage] = deque(maxlen=keep)

    async def send(self, message: OutgoingMessage) -> None:
        self.recent.append(message)
        log.info("%s to %s: %s", self.channel, _mask_address(message.address), message.subject)


def LogSmsSender(keep: int = 100) -> LogSender:
    """The default SMS sender: the log (a real gateway is out of scope)."""
    return LogSender("sms", keep)


def _mask_address(address: str) -> str:
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain}"
    return address[:3] + "****" + address[-4:] if len(address) > 7 else "***"


class EmailSmsGateway:
    """SMS as mail to ``<number>@<domain>`` of an e-mail-to-SMS gateway (the text in the body)."""

    channel = "sms"

    def __init__(self, mail: SmtpEmailSender, domain: str) -> None:
        self.mail = mail
        self.domain = domain

    async def send(self, message: OutgoingMessage) -> None:
        number = "".join(ch for ch in message.address if ch.isdecimal() or ch == "+")
        await self.mail.send(OutgoingMessage("email", f"{number}@{self.domain}", message.subject, message.body,
                                             message.tenant, message.reference))


def default_senders(smtp: SmtpSettings | None = None) -> dict[str, Sender]:
    smtp = smtp or SmtpSettings()
    email: Sender = SmtpEmailSender(smtp) if smtp.host else LogSender("email")
    domain = env_optional("CITYOS_SMS_EMAIL_DOMAIN")
    sms: Sender = (EmailSmsGateway(SmtpEmailSender(smtp), domain) if domain and smtp.host
                   else LogSmsSender())
    return {"email": email, "sms": sms}
