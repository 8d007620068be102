"""The doorbell that wakes waiting ranks, and the MPI transport defaults (no MPI needed)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from legampi import transport
from legampi.transport import Doorbell

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux's")


@linux_only
def test_a_ring_wakes_the_peer_and_is_consumed() -> None:
    a, b = Doorbell(), Doorbell()
    try:
        a.add_peer(1, b.address)
        assert b.wait(0) is False  # nothing pending
        a.ring(1)
        a.ring(1)
        assert b.wait(5.0) is True  # returns at once: rung
        assert b.wait(0) is False  # both rings were consumed by the one wake-up
    finally:
        a.close()
        b.close()


@linux_only
def test_ring_self_from_another_thread_wakes_the_wait() -> None:
    bell = Doorbell()
    try:
        t = threading.Thread(target=bell.ring_self)
        t.start()
        t.join()
        assert bell.wait(5.0) is True
    finally:
        bell.close()


@linux_only
def test_an_unreachable_peer_is_dropped_and_polled_instead() -> None:
    """A peer on another host (its abstract name does not exist here) fails once, then is never rung."""
    a = Doorbell()
    try:
        a.add_peer(3, b"\0legampi-bell-nobody-" + os.urandom(8).hex().encode())
        a.ring(3)
        assert 3 not in a.peers
        a.ring(3)  # no error the second time either
    finally:
        a.close()


def test_a_peer_without_a_doorbell_is_not_rung() -> None:
    a = Doorbell()
    try:
        a.add_peer(2, None)  # e.g. a rank on a system without abstract sockets
        assert 2 not in a.peers
    finally:
        a.close()


def test_disabled_doorbell_waits_by_sleeping() -> None:
    bell = Doorbell(enabled=False)
    assert bell.address is None
    assert bell.wait(0.001) is False
    bell.ring_self()  # harmless no-op
    bell.close()


def test_transport_defaults_never_override_the_operator(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    bundled = tmp_path / "lib" / "mpich"
    bundled.mkdir(parents=True)
    (bundled / "libfabric.so.1").write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv("MPI4PY_LIBMPI", raising=False)
    monkeypatch.setenv("MPIR_CVAR_CH4_NETMOD", "ucx")
    monkeypatch.delenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", raising=False)
    monkeypatch.delenv("UCX_MEM_EVENTS", raising=False)
    transport.quiet_transport_defaults()
    assert os.environ["MPIR_CVAR_CH4_NETMOD"] == "ucx"  # the operator's choice stands
    assert os.environ["MPIR_CVAR_ENABLE_HEAVY_YIELD"] == "1"
    assert os.environ["UCX_MEM_EVENTS"] == "no"


def test_transport_defaults_leave_a_site_mpi_alone(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # no bundled MPICH here
    monkeypatch.delenv("UCX_MEM_EVENTS", raising=False)  # set by the call; restored after the test
    monkeypatch.delenv("MPIR_CVAR_CH4_NETMOD", raising=False)
    monkeypatch.delenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", raising=False)
    transport.quiet_transport_defaults()
    assert "MPIR_CVAR_CH4_NETMOD" not in os.environ
    assert "MPIR_CVAR_ENABLE_HEAVY_YIELD" not in os.environ
