"""The demo's ports: two chosen one after the other are never the same, and an API port already taken is a clear
error of the demo's server, not a process exit escaping the event loop (a CI run failed on both, 2026-12-06)."""

from __future__ import annotations

import socket

import pytest
from fastapi import FastAPI

from cityos.sim.demo import _QuietServer
from cityos.sim.platform import free_port


def test_a_port_chosen_a_moment_ago_is_not_handed_out_again() -> None:
    first = free_port(0)
    assert free_port(first, taken={first}) != first  # even when asked for it by name
    chosen = {first}
    for _ in range(50):  # the kernel may give a just-closed port again: `taken` keeps them apart
        chosen.add(free_port(0, taken=chosen))
    assert len(chosen) == 51


async def test_an_api_port_in_use_is_an_error_not_an_exit() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"could not start on 127.0.0.1:{port}"):
            async with _QuietServer(FastAPI(), "127.0.0.1", port).running():
                pytest.fail("started on a port in use")
