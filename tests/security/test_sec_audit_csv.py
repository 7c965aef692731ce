"""Issue 12, finding 15: the audit CSV export keeps empty fields empty and still neutralises formulas."""

from __future__ import annotations

import csv
import io

from sec_harness import Harness

from cityos.security.audit import AuditEvent


async def test_csv_export_keeps_empty_fields_empty_and_neutralises_formulas(sec: Harness) -> None:
    for resource in ("=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tTAB", "\rCR", "plain", ""):
        await sec.state.audit.record(AuditEvent("csv.test", resource, actor="u", ip=""))
    auditor = await sec.user("csv-auditor", "auditor")
    r = await sec.client.get("/audit/export", params={"format": "csv", "action": "csv.test"},
                             headers=await sec.bearer(auditor))
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 8
    assert all(row["ip"] == "" for row in rows)  # was "'" for every empty field
    resources = [row["resource"] for row in rows]
    assert resources == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "'\tTAB", "'\rCR", "plain", ""]
