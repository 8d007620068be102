"""`[func_conf] threads_per_file` through a real `mpiexec` job: a spread file archives like a serial one."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from crypt4gh.keys import get_private_key
from crypt4gh.lib import decrypt

from legampi import spread

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not spread.available(), reason="no libsodium for spread")]


def test_threads_per_file_3_archives_every_file(workspace):
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(text.replace("[func_conf]\n", "[func_conf]\nthreads_per_file = 3\n"), encoding="utf-8")
    sizes = [0, 1, 65536, 3_000_001, 5 << 20]
    entries = [workspace.add_file(f"DS1/f{i}.bam.c4gh", size) for i, size in enumerate(sizes)]
    workspace.legampi("register", str(workspace.manifest("DS1", entries, sha256=True)), "--dataset", "DS1")
    p = workspace.mpi(2, "process")
    assert f"{len(sizes)} file(s), {len(sizes)} available, 0 failed" in p.stdout, p.stdout + p.stderr
    files = {f["file_name"]: f for f in json.loads(workspace.legampi("status", "--json").stdout)["files"]}
    sk = get_private_key(str(workspace.archive_sk), lambda: None)
    for e in entries:
        out = io.BytesIO()
        with open(workspace.end_storage / e["name"], "rb") as fh:
            decrypt([(0, sk, None)], fh, out)
        assert hashlib.md5(out.getvalue()).hexdigest() == e["md5"] == files[e["name"]]["md5"]
