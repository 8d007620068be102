"""The doorbell across hosts (UDP) and the lifelines that name a lost rank (issue 14), in one process."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from legampi.progress import Summary, skip_reason
from legampi.transport import Doorbell, Lifelines

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets and SIOCGIFADDR")


def _until(cond, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


@linux
def test_a_peer_on_another_host_is_rung_over_udp() -> None:
    a, b = Doorbell(), Doorbell()
    try:
        if b.udp is None:
            pytest.skip("no non-loopback IPv4 address on this machine")
        host, _address, udp = b.card
        a.add_peer(1, ("elsewhere", None, udp))  # another host name: the UDP doorbell, not the Unix one
        assert 1 in a.remote and 1 not in a.peers
        a.ring(1)
        assert b.wait(2.0), "the UDP ring did not wake the receiver"
        assert not b.wait(0.01), "every pending ring is consumed"
    finally:
        a.close()
        b.close()


def test_a_broken_lifeline_names_the_rank_and_a_goodbye_does_not() -> None:
    lost: list[str] = []
    rank0 = Lifelines(lambda: lost.append("rung"))
    rank0.listen(0)
    if rank0._listen is None:
        pytest.skip("cannot listen on TCP here")
    port = rank0._listen.getsockname()[1]
    rank0.hosts.update({1: "hostA", 2: "hostB"})
    rank0.start()
    killed = socket.create_connection(("127.0.0.1", port))
    killed.sendall((1).to_bytes(4, "big"))
    polite = Lifelines(lambda: None)
    polite.connect(0, ["127.0.0.1"], port, 2)
    time.sleep(0.2)
    polite.close()  # a normal end: goodbye first
    killed.close()  # a death: the kernel closes the line, no goodbye
    assert _until(lambda: rank0.lost == [1]), rank0.lost
    time.sleep(0.2)
    assert rank0.lost == [1] and lost == ["rung"]
    rank0.close()


def test_skipped_files_are_named_with_their_reason_in_the_summary() -> None:
    claimed = {"file_name": "a.c4gh", "status": "processing", "claimed_by": "h2-1-2", "claimed_at": "T"}
    failed = {"file_name": "b.c4gh", "status": "failed", "error": "bad header"}
    s = Summary("job")
    s.skipped = [skip_reason(claimed), skip_reason(failed)]
    text = "\n".join(s.lines())
    assert "SKIPPED a.c4gh: claimed by job h2-1-2 since T" in text
    assert "SKIPPED b.c4gh: failed (bad header)" in text
