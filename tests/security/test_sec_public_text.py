"""Issue 12, finding 15: phone and ID numbers in public free text (`mask_public_text`)."""

from __future__ import annotations

import pytest

from cityos.security.masking import mask_public_text


@pytest.mark.parametrize("text, expected", [
    ("call 13800001234 now", "call 138****1234 now"),
    ("电话：138-0000-1234", "电话：138****1234"),
    ("+86 138 0000 1234", "+86 138****1234"),
    ("座机 010-12345678 转 123", "座机 010-****78"),
    ("(021)87654321", "(021)-****21"),
    ("身份证 11010519491231002X 谢谢", "身份证 110***********002X 谢谢"),
    # Not phone or ID numbers: left alone.
    ("订单 20240101123456789012", "订单 20240101123456789012"),
    ("2026-03-01 08:00, 12 cm deep, room 12345678", "2026-03-01 08:00, 12 cm deep, room 12345678"),
    ("", ""),
])
def test_mask_public_text(text: str, expected: str) -> None:
    assert mask_public_text(text) == expected
