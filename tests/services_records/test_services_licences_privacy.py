"""Issue 12, finding 15: anonymous licence verification shows a person's name masked (sensitive class)."""

from __future__ import annotations

from typing import Any

BASE = "/api/services/licences"
SUBJECT = {"applicantName": "王小强", "childName": "王小椰", "motherName": "陈芳", "holderName": "Li Lei",
           "birthDate": "1990-01-01", "companyName": "三元餐饮有限公司", "projectName": "海甸岛一号楼",
           "remark": "联系 138-0000-1234 或 0898-66123456"}


async def test_verify_masks_every_persons_name(app: Any, anon_client: Any, client: Any) -> None:
    doc = dict(await app.state.licences.issue("", "u-name", "social-security-card", dict(SUBJECT),
                                              "human-resources-social-security", None))
    for response in (await anon_client.post(f"{BASE}/verify", json=doc),
                     await anon_client.get(f"{BASE}/verify/{doc['id']}")):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["valid"] is True
        subject = body["licence"]["subject"]
        assert subject["applicantName"] == "王**" and subject["childName"] == "王**"
        assert subject["motherName"] == "陈*" and subject["holderName"] == "L****i"
        assert subject["birthDate"] != "1990-01-01"
        assert subject["remark"] == "联系 138****1234 或 0898-****56"
        for name in ("王小强", "王小椰", "陈芳", "Li Lei", "1990-01-01", "0000-1234", "66123456"):
            assert name not in response.text
        # Organisations and things stay readable: that is what a verifier checks.
        assert subject["companyName"] == "三元餐饮有限公司" and subject["projectName"] == "海甸岛一号楼"
    # A forged document does not reveal anything either.
    forged = {**doc, "subject": {**doc["subject"], "applicantName": "赵六"}}
    refused = await anon_client.post(f"{BASE}/verify", json=forged)
    assert refused.status_code == 200 and refused.json()["valid"] is False and "赵六" not in refused.text
