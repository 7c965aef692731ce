"""融资对接 in the simulated city: banks' loan products and financing needs of some simulated companies,
so the financing desk is not empty in the demo. Deterministic for a seed."""

from __future__ import annotations

from typing import Any

import numpy as np

PRODUCTS: tuple[dict[str, Any], ...] = (
    {"bank": "中国工商银行", "name": "经营快贷", "amountMin": 10, "amountMax": 300, "termMin": 6, "termMax": 36,
     "industries": [], "minCredit": "B", "rate": "LPR+0.35%"},
    {"bank": "中国建设银行", "name": "善科贷", "amountMin": 50, "amountMax": 2000, "termMin": 12, "termMax": 60,
     "industries": ["C", "I", "M"], "minCredit": "B", "rate": "LPR+0.2%"},
    {"bank": "中国农业银行", "name": "惠农e贷", "amountMin": 5, "amountMax": 200, "termMin": 6, "termMax": 36,
     "industries": ["A"], "minCredit": "M", "rate": "LPR"},
    {"bank": "城市商业银行", "name": "小微易贷", "amountMin": 1, "amountMax": 100, "termMin": 3, "termMax": 24,
     "industries": [], "minCredit": "M", "rate": "LPR+0.5%"},
    {"bank": "城市商业银行", "name": "商贸流动资金贷", "amountMin": 20, "amountMax": 500, "termMin": 3, "termMax": 12,
     "industries": ["F", "G", "H"], "minCredit": "B", "rate": "LPR+0.45%"},
)
PURPOSES = ("购置生产设备", "补充流动资金", "研发投入", "扩建厂房", "采购原材料", "数字化改造")


def needs(company_ids: list[str], count: int, seed: int = 17) -> list[tuple[str, dict[str, Any]]]:
    """`count` needs of companies drawn from `company_ids`: amounts (万元) log-normal around 80, terms 6-60 months."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(company_ids), size=min(count, len(company_ids)), replace=False)
    out = []
    for index in picked:
        amount = float(np.clip(np.round(rng.lognormal(np.log(80), 0.9)), 5, 3000))
        term = int(rng.choice([6, 12, 24, 36, 60]))
        out.append((company_ids[int(index)], {"amount": amount, "term": term,
                                              "purpose": str(rng.choice(PURPOSES))}))
    return out
