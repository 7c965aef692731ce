"""Self-registration of citizens and companies, and password reset, verified by a phone code.

Real-name checks are the ones a platform can make by itself: the resident ID number's GB 11643
check digit and birth date (`stdnum.cn.ric`), the unified social credit code's GB 32100 check
character (`stdnum.cn.uscc`), a name, and a mainland mobile number proven by a six-digit code sent
through the notification senders (the SMS channel of `services.notify`). A check against the public
security or market-regulation registers is a deployment's gateway, outside this package.

Abuse limits: a code per phone at most every `resend_seconds` and `codes_per_hour` an hour; every
anonymous call counted per source address (`rate_per_minute`); a code allows `max_attempts` wrong
tries and expires after `code_seconds`. One account per identity number, credit code and phone.
A reset code request answers the same whether or not the phone has an account.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from stdnum import exceptions as stdnum_errors
from stdnum.cn import ric, uscc

from cityos.config import env_int
from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, BadRequestData, ProblemError
from cityos.security.accounts import AccountService
from cityos.security.crypto import KeyRing
from cityos.security.policy import Role
from cityos.security.service import SecurityService
from cityos.services.notify.service import Notifier
from cityos.services.registration.models import KINDS, PURPOSES, accounts, phone_codes

MOBILE = re.compile(r"^1[3-9]\d{9}$")
NAME = re.compile(r"^[^\x00-\x1f<>]{2,64}$")


class CodeRefused(ProblemError):
    status, error_type, title = 400, "https://cityos.dev/errors/VerificationCode", "Verification code refused"


class TooSoon(ProblemError):
    status, error_type, title = 429, "https://cityos.dev/errors/TooManyRequests", "Too many requests"


@dataclass(frozen=True)
class RegistrationSettings:
    code_seconds: int = field(default_factory=lambda: env_int("CITYOS_PHONE_CODE_SECONDS", 600))
    resend_seconds: int = field(default_factory=lambda: env_int("CITYOS_PHONE_CODE_RESEND_SECONDS", 60))
    codes_per_hour: int = field(default_factory=lambda: env_int("CITYOS_PHONE_CODES_PER_HOUR", 5))
    max_attempts: int = field(default_factory=lambda: env_int("CITYOS_PHONE_CODE_ATTEMPTS", 5))
    rate_per_minute: int = field(default_factory=lambda: env_int("CITYOS_REGISTRATION_RATE_PER_MINUTE", 20))


def blind_index(keyring: KeyRing, kind: str, value: str) -> str:
    """A keyed digest of a normalised identifier: equal values match, the value cannot be read back.

    Keyed with the ring's oldest data key, so a key rotation (which adds a newer key) keeps it stable."""
    _alg, key = list(keyring.keys.values())[-1]
    return hmac.new(key, f"cityos-index:{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def normal_phone(raw: Any) -> str:
    phone = re.sub(r"[\s-]", "", raw) if isinstance(raw, str) else ""
    phone = phone.removeprefix("+86")
    if not MOBILE.match(phone):
        raise BadRequestData("手机号须为 11 位大陆手机号 phone must be a mainland mobile number "
                             "(11 digits starting 13-19)")
    return phone


def check_resident_id(raw: Any) -> str:
    """A resident ID number (GB 11643-1999) with a valid check digit and birth date; normalised."""
    if not isinstance(raw, str) or len(raw) > 32:
        raise BadRequestData("身份证号格式不正确 idNumber must be an 18-character resident ID number")
    try:
        return str(ric.validate(raw.strip().upper()))
    except stdnum_errors.InvalidChecksum:
        raise BadRequestData("身份证号校验位不正确 the resident ID number's check digit is wrong") from None
    except stdnum_errors.ValidationError:
        raise BadRequestData("身份证号格式不正确 idNumber is not a valid resident ID number "
                             "(18 characters, a real birth date)") from None


def check_credit_code(raw: Any) -> str:
    """A unified social credit code (GB 32100-2015) with a valid check character; normalised."""
    if not isinstance(raw, str) or len(raw) > 32:
        raise BadRequestData("统一社会信用代码格式不正确 creditCode must be an 18-character unified social credit code")
    try:
        return str(uscc.validate(raw.strip().upper()))
    except stdnum_errors.InvalidChecksum:
        raise BadRequestData("统一社会信用代码校验位不正确 the credit code's check character is wrong") from None
    except stdnum_errors.ValidationError:
        raise BadRequestData("统一社会信用代码格式不正确 creditCode is not a unified social credit code") from None


def _text(doc: dict[str, Any], key: str, limit: int = 128) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
        raise BadRequestData(f"{key} 须为不超过 {limit} 个字符的非空文本 "
                             f"{key} must be a non-empty string of at most {limit} characters")
    return value.strip()


class Registration:
    def __init__(self, engine: AsyncEngine, security: SecurityService, accounts_service: AccountService,
                 notifier: Notifier, write_lock: asyncio.Lock, settings: RegistrationSettings | None = None) -> None:
        self.engine = engine
        self.security = security
        self.accounts = accounts_service
        self.notifier = notifier
        self.settings = settings or RegistrationSettings()
        self._write_lock = write_lock

    def _digest(self, kind: str, value: str) -> str:
        return blind_index(self.security.keyring, kind, value)

    async def limit(self, what: str, ip: str) -> None:
        """Count an anonymous call of this source (429 with Retry-After above the limit)."""
        await self.security.rate_limit(f"registration:{what}:{ip}", self.settings.rate_per_minute)

    # ------------------------------------------------------------------ codes

    async def send_code(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a six-digit code to the phone (purpose register or reset)."""
        phone = normal_phone(body.get("phone"))
        purpose = body.get("purpose", "register")
        if purpose not in PURPOSES:
            raise BadRequestData(f"用途无效 purpose must be one of {', '.join(PURPOSES)}")
        digest = self._digest("phone", phone)
        now = clock.now()
        async with self.engine.connect() as conn:
            recent = (await conn.execute(select(func.count(), func.max(phone_codes.c.created_at)).where(
                phone_codes.c.tenant == tenant, phone_codes.c.phone_digest == digest,
                phone_codes.c.created_at > now - timedelta(hours=1)))).one()
            registered = (await conn.execute(select(accounts.c.user_id).where(
                accounts.c.tenant == tenant, accounts.c.phone_digest == digest))).first()
        last = clock.as_utc(recent[1]) if recent[1] is not None else None
        if last is not None and (now - last).total_seconds() < self.settings.resend_seconds:
            wait = self.settings.resend_seconds - int((now - last).total_seconds())
            raise TooSoon(f"请 {wait} 秒后再试 a code was sent to this phone less than "
                          f"{self.settings.resend_seconds} s ago", headers={"Retry-After": str(max(1, wait))})
        if int(recent[0]) >= self.settings.codes_per_hour:
            raise TooSoon(f"每小时发送次数已达上限 at most {self.settings.codes_per_hour} codes an hour per phone",
                          headers={"Retry-After": "3600"})
        answer = {"sent": True, "expiresIn": self.settings.code_seconds, "resendAfter": self.settings.resend_seconds}
        if purpose == "register" and registered is not None:
            raise AlreadyExists("该手机号已注册，可找回密码 this phone already has an account; "
                                "reset its password instead")
        code = f"{secrets.randbelow(1_000_000):06d}"
        async with write_transaction(self.engine, self._write_lock) as conn:
            await conn.execute(insert(phone_codes).values(
                id=uuid.uuid4().hex, tenant=tenant, phone_digest=digest, purpose=purpose,
                code_digest=self._digest("code", f"{digest}:{purpose}:{code}"), attempts=0, created_at=now,
                expires_at=now + timedelta(seconds=self.settings.code_seconds), used_at=None))
            await conn.execute(delete(phone_codes).where(phone_codes.c.created_at < now - timedelta(days=1)))
        if purpose == "reset" and registered is None:
            return answer  # the same answer: whether a phone has an account is not told to strangers
        minutes = self.settings.code_seconds // 60
        what = "注册 registration" if purpose == "register" else "找回密码 password reset"
        await self.notifier.notify(
            tenant, f"phone:{digest[:32]}", f"【CityOS】验证码 {code}",
            f"您的{what.split()[0]}验证码是 {code}，{minutes} 分钟内有效，请勿告诉他人。"
            f"Your {what.split()[1]} code is {code}, valid {minutes} min. Do not share it.", phone=phone)
        return answer

    async def _consume_code(self, tenant: str, phone_digest: str, purpose: str, code: Any) -> None:
        """Accept the newest unused code of this phone and purpose once; count a wrong try."""
        if not isinstance(code, str) or not re.fullmatch(r"\d{6}", code.strip()):
            raise CodeRefused("验证码为 6 位数字 the code is six digits")
        now = clock.now()
        wrong: CodeRefused | None = None
        async with write_transaction(self.engine, self._write_lock) as conn:
            row = (await conn.execute(select(phone_codes).where(
                phone_codes.c.tenant == tenant, phone_codes.c.phone_digest == phone_digest,
                phone_codes.c.purpose == purpose, phone_codes.c.used_at.is_(None))
                .order_by(phone_codes.c.created_at.desc()).limit(1))).mappings().first()
            if row is None:
                raise CodeRefused("请先获取验证码 no code was sent to this phone; request one")
            if clock.as_utc(row["expires_at"]) <= now:
                raise CodeRefused("验证码已过期 the code has expired; request a new one")
            if row["attempts"] >= self.settings.max_attempts:
                raise CodeRefused("错误次数过多，请重新获取验证码 too many wrong codes; request a new one")
            expected = self._digest("code", f"{phone_digest}:{purpose}:{code.strip()}")
            if not hmac.compare_digest(expected, row["code_digest"]):
                await conn.execute(update(phone_codes).where(phone_codes.c.id == row["id"])
                                   .values(attempts=phone_codes.c.attempts + 1))
                left = self.settings.max_attempts - row["attempts"] - 1
                wrong = CodeRefused(f"验证码错误，还可尝试 {left} 次 wrong code ({left} tries left)")
            else:
                claimed = await conn.execute(update(phone_codes).where(
                    phone_codes.c.id == row["id"], phone_codes.c.used_at.is_(None)).values(used_at=now))
                if claimed.rowcount != 1:
                    raise CodeRefused("验证码已使用 the code was used already")
        if wrong is not None:
            raise wrong  # after the commit that counted the try

    # ------------------------------------------------------------------ register

    async def register(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("kind", "citizen")
        if kind not in KINDS:
            raise BadRequestData(f"账户类型无效 kind must be one of {', '.join(KINDS)}")
        username = _text(body, "username")
        password = _text(body, "password", 256)
        name = _text(body, "name", 64)
        if not NAME.match(name):
            raise BadRequestData("姓名或名称须为 2-64 个字符，不含控制字符或 <> "
                                 "name must be 2-64 characters without control characters or <>")
        if kind == "citizen":
            identity = check_resident_id(body.get("idNumber"))
        else:
            identity = check_credit_code(body.get("creditCode"))
        phone = normal_phone(body.get("phone"))
        self.security._check_username(username)
        self.security.check_password(password, username, name, phone)
        identity_digest = self._digest(kind, identity)
        phone_digest = self._digest("phone", phone)
        async with self.engine.connect() as conn:
            taken = (await conn.execute(select(accounts.c.identity_digest, accounts.c.phone_digest).where(
                accounts.c.tenant == tenant, (accounts.c.identity_digest == identity_digest)
                | (accounts.c.phone_digest == phone_digest)))).all()
        if any(r.identity_digest == identity_digest for r in taken):
            raise AlreadyExists("该证件已注册，可找回密码 an account with this ID number or credit code exists; "
                                "reset its password instead")
        if taken:
            raise AlreadyExists("该手机号已注册 this phone already has an account")
        await self._consume_code(tenant, phone_digest, "register", body.get("code"))
        user_id = uuid.uuid4().hex
        async with write_transaction(self.engine, self._write_lock) as conn:
            # Claimed first: the unique indexes settle a race between two registrations of one person.
            await conn.execute(insert(accounts).values(user_id=user_id, tenant=tenant, kind=kind,
                                                       identity_digest=identity_digest, phone_digest=phone_digest,
                                                       created_at=clock.now()))
        role = Role.CITIZEN.value if kind == "citizen" else Role.ENTERPRISE.value
        try:
            new = await self.security.create_user(username, password, role, tenant=tenant, display_name=name,
                                                  phone=phone, id_number=identity)
        except Exception:
            async with write_transaction(self.engine, self._write_lock) as conn:
                await conn.execute(delete(accounts).where(accounts.c.user_id == user_id))
            raise
        async with write_transaction(self.engine, self._write_lock) as conn:
            await conn.execute(update(accounts).where(accounts.c.user_id == user_id).values(user_id=new.id))
        return {"username": username, "kind": kind, "role": role, "name": name,
                "phone": phone[:3] + "****" + phone[-4:]}

    # ------------------------------------------------------------------ reset

    async def reset_password(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        phone = normal_phone(body.get("phone"))
        password = _text(body, "newPassword", 256)
        self.security.check_password(password)  # before the code is spent (the name is checked again later)
        digest = self._digest("phone", phone)
        await self._consume_code(tenant, digest, "reset", body.get("code"))
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts.c.user_id).where(
                and_(accounts.c.tenant == tenant, accounts.c.phone_digest == digest)))).first()
        if row is None:  # a code is only ever sent to a registered phone; a row gone since: refuse plainly
            raise CodeRefused("该手机号未注册 no account has this phone")
        username = await self.accounts.reset_password(str(row.user_id), password, proof="phone code")
        return {"username": username, "reset": True}

