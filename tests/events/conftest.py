"""A 3-node NATS JetStream cluster for the module that asks for it (started here, stopped after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nats_cluster import NatsCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    nodes = NatsCluster(3).start()
    try:
        yield nodes
    finally:
        nodes.stop()
