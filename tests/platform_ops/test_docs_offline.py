"""`/docs` and `/redoc` load every asset from the server itself: no CDN (city networks are often closed)."""

from __future__ import annotations

import re

import httpx


async def test_api_docs_need_no_internet(anon_client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = await anon_client.get(page)
        assert html.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
        assets = [s for s in sources if s.endswith((".js", ".css", ".png"))]
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            assert (await anon_client.get(asset)).status_code == 200, asset
    spec = await anon_client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "CityOS"
