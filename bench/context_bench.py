"""Benchmark: how long big inline @contexts stall the event loop, and what the context cache holds.

    uv run python bench/context_bench.py [--contexts 6] [--kb 900]

The red-team pass sent anonymous queries with 6-7 MB inline @contexts: each was processed on the
event loop (~1.4 s of stall) and cached for ever. Here `--contexts` distinct inline contexts of
`--kb` KB each are resolved one after another while a ticker coroutine measures the event loop's lag
(how late a 10 ms sleep wakes up; what every other request waits).

- baseline: the same contexts processed on the event loop (what `ContextResolver` did before);
- guarded: `ContextResolver.resolve` (a worker thread for big contexts, a bounded cache).

Reported: the ticker's worst and p99 lag in each case, total time, and the cache's entries and weight
against its budget. Prints exactly one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from cityos.hub.jsonld import ContextLimits, ContextResolver, ContextStore


def context_of(kb: int, tag: str) -> dict[str, str]:
    return {f"term{tag}{n:07d}": f"https://example.org/vocab/{tag}term{n:07d}" for n in range(kb * 1024 // 60)}


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - start - 0.01)


async def _measure(work: Any) -> dict[str, float]:
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(lags, stop))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    ordered = sorted(lags)
    return {"max_lag_ms": round(ordered[-1] * 1000, 1),
            "p99_lag_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
            "median_lag_ms": round(statistics.median(ordered) * 1000, 2), "seconds": round(elapsed, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, default=6)
    parser.add_argument("--kb", type=int, default=900)
    args = parser.parse_args()
    contexts = [context_of(args.kb, f"c{n}_") for n in range(args.contexts)]
    limits = ContextLimits()

    baseline_resolver = ContextResolver(ContextStore(limits=limits))

    async def on_loop() -> None:
        for context in contexts:
            baseline_resolver._process(context, {})
            await asyncio.sleep(0)

    resolver = ContextResolver(ContextStore(limits=limits))

    async def guarded() -> None:
        for context in contexts:
            await resolver.resolve(context, may_fetch=False)

    baseline = await _measure(on_loop)
    result = await _measure(guarded)
    print(json.dumps({
        "bench": "context", "contexts": args.contexts, "kb_each": args.kb,
        "baseline_on_loop": baseline, "guarded": result,
        "cache": {"entries": len(resolver._active), "weight_bytes": int(resolver._active.currsize),
                  "budget_bytes": limits.cache_bytes, "max_entries": limits.cache_entries},
    }))


if __name__ == "__main__":
    asyncio.run(main())
