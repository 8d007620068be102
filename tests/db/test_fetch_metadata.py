"""`legampi fetch-metadata` against a stand-in EGA metadata API (tests/ega_api_server.py).

Fetching does not depend on the database backend, so most tests run on SQLite only; --register runs on
both. The API password comes from `[api] api_pass_env` and must appear in no output, file or table.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from legampi import httpretry, manifest
from legampi.manifest import ApiError, ManifestError, fetch_metadata
from tests.conftest import Workspace, load_stand_in

API_PASSWORD = "Ega-Api-Pw-Okapi-4471"
API_USER = "ega-box-0042"
DATASET = "EGAD00000000077"
MD5 = [f"{i:x}" * 32 for i in range(1, 10)]  # plaintext md5s
SHA = [f"{i:x}" * 64 for i in range(1, 10)]  # plaintext sha256s
ENC_MD5 = [f"e{i:x}" * 16 for i in range(1, 10)]  # md5s of the encrypted files as transferred
ENC_SHA = [f"e{i:x}" * 32 for i in range(1, 10)]


@pytest.fixture
def files(ega_api: SimpleNamespace) -> list[dict]:
    """EGA's semantics: fileSize and checksum of the encrypted file, unencryptedChecksum of the plaintext."""
    return [
        ega_api.file("EGAF00000000001", DATASET, "sample 1/reads.bam.c4gh", 5_000_000_000_000, ENC_MD5[0], MD5[0]),
        ega_api.file(
            "EGAF00000000002",
            DATASET,
            "sample 2/reads.bam.cip",
            1234,
            ENC_SHA[1],
            SHA[1],
            checksum_type="SHA256",
            unencrypted_type="SHA256",
        ),
        ega_api.file("EGAF00000000003", DATASET, "sample\u00e9/x.gpg", 99, ENC_MD5[2], MD5[2]),
    ]


def use_api(ws: Workspace, server: Any, timeout: float = 5, retries: int = 3) -> dict[str, str]:
    """Point the workspace's config at the server; returns the environment holding the password."""
    text = ws.config.read_text()
    text += (
        f"\n[api]\napi_url = {server.api_url}\napi_user = {API_USER}\napi_pass_env = EGA_TEST_PW\n"
        f"timeout = {timeout}\nretries = {retries}\n"
    )
    ws.config.write_text(text)
    return {"EGA_TEST_PW": API_PASSWORD}


def no_secret(ws: Workspace, dbh: SimpleNamespace, *outputs: str) -> None:
    for text in outputs:
        assert API_PASSWORD not in text
    for p in ws.metadata.rglob("*"):
        assert API_PASSWORD not in p.read_text(errors="replace")
    assert API_PASSWORD not in repr(dbh.dump(ws.db_url))


def test_fetch_saves_the_json(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD) as server:
        env = use_api(ws, server)
        before = dbh.dump(ws.db_url)
        r = ws.legampi("--log-level", "debug", "fetch-metadata", DATASET, env=env)  # the real executable
        target = ws.metadata / f"{DATASET}.json"
        assert f"metadata of {DATASET} saved to {target}" in r.stdout
        assert json.loads(target.read_text()) == files
        assert [p.name for p in ws.metadata.iterdir()] == [target.name]  # no temporary file left
        assert server.requests == [
            {
                "path": f"/elixir/data/metadata/datasets/{DATASET}/files",
                "user": API_USER,
                "password_ok": True,
                "status": 200,
            }
        ]
        assert dbh.dump(ws.db_url) == before  # without --register nothing is registered
        no_secret(ws, dbh, r.stdout, r.stderr)


def test_fetch_and_register(
    workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = workspace
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD) as server:
        env = use_api(ws, server)
        r = dbh.ok(ws, "fetch-metadata", DATASET, "--register", env=env)
        assert f"dataset {DATASET}: 3 file(s) registered" in r.stdout
        db = dbh.connect(ws.db_url)
        got = {f["file_id"]: (f["dataset_id"], f["file_name"], f["size"], f["md5"], f["sha256"]) for f in db.files()}
        assert got == {  # the plaintext checksums; `checksum` (of the encrypted file) is never taken for them
            "EGAF00000000001": (DATASET, "sample 1/reads.bam.c4gh", 5_000_000_000_000, MD5[0], None),
            "EGAF00000000002": (DATASET, "sample 2/reads.bam.cip", 1234, None, SHA[1]),
            "EGAF00000000003": (DATASET, "sample\u00e9/x.gpg", 99, MD5[2], None),
        }
        [ds] = db.datasets()
        assert (ds["dataset_id"], ds["n_files"], ds["n_bytes"]) == (DATASET, 3, 5_000_000_001_333)
        before = dbh.dump(ws.db_url)
        r2 = dbh.ok(ws, "fetch-metadata", DATASET, "--register", env=env)
        assert "0 file(s) registered, 3 already registered" in r2.stdout
        assert dbh.dump(ws.db_url) == before
        no_secret(ws, dbh, r.output, r2.output)


def test_server_errors_are_retried_then_succeed(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    with ega_api.Server(
        {DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=2, fail_status=503
    ) as server:
        env = use_api(ws, server)
        r = dbh.ok(ws, "fetch-metadata", DATASET, env=env)
        assert [q["status"] for q in server.requests] == [503, 503, 200]
        assert json.loads((ws.metadata / f"{DATASET}.json").read_text()) == files
        no_secret(ws, dbh, r.output)


def test_unauthorised_fails_clearly_and_writes_nothing(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    with ega_api.Server({DATASET: files}, user=API_USER, password="the server expects another") as server:
        env = use_api(ws, server)
        before = dbh.dump(ws.db_url)
        r = ws.legampi("--log-level", "debug", "fetch-metadata", DATASET, "--register", env=env, check=False)
        assert r.returncode == 1
        assert f"legampi fetch-metadata: error: EGA API {server.base}" in r.stderr
        assert "HTTP 401" in r.stderr and DATASET in r.stderr and "Traceback" not in r.stderr
        assert len(server.requests) == 1  # a 4xx is not retried
        assert server.requests[0]["user"] == API_USER and not server.requests[0]["password_ok"]
        assert list(ws.metadata.iterdir()) == []
        assert dbh.dump(ws.db_url) == before
        no_secret(ws, dbh, r.stdout, r.stderr)


def test_server_that_keeps_failing_gives_up(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=100) as server:
        env = use_api(ws, server, retries=1)
        before = dbh.dump(ws.db_url)
        r = dbh.run(ws, "fetch-metadata", DATASET, "--register", env=env)
        assert r.returncode == 1
        assert "gave up after 2 attempts" in r.stderr and "HTTP 500" in r.stderr
        assert len(server.requests) == 2
        assert list(ws.metadata.iterdir()) == [] and dbh.dump(ws.db_url) == before
        no_secret(ws, dbh, r.output)


def test_garbage_answer_is_refused_before_it_is_saved(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    bad = [dict(files[0], fileName="../../etc/cron.d/x")]
    with ega_api.Server({DATASET: bad}, user=API_USER, password=API_PASSWORD) as server:
        env = use_api(ws, server)
        before = dbh.dump(ws.db_url)
        r = dbh.run(ws, "fetch-metadata", DATASET, "--register", env=env)
        assert r.returncode == 1 and "contains '..'" in r.stderr
        assert list(ws.metadata.iterdir()) == [] and dbh.dump(ws.db_url) == before


def test_unknown_dataset_is_a_clear_error(
    sqlite_workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace, files: list[dict]
) -> None:
    ws = sqlite_workspace
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD) as server:
        env = use_api(ws, server)
        r = dbh.run(ws, "fetch-metadata", "EGAD00000000999", env=env)
        assert r.returncode == 1 and "HTTP 404" in r.stderr and "EGAD00000000999" in r.stderr
        assert list(ws.metadata.iterdir()) == []


def test_missing_api_url_is_a_configuration_error(sqlite_workspace: Workspace, dbh: SimpleNamespace) -> None:
    r = dbh.run(sqlite_workspace, "fetch-metadata", DATASET)
    assert r.returncode == 2
    assert f"{sqlite_workspace.config}: [api] api_url: missing" in r.stderr


def test_timeouts_are_retried_and_reported(ega_api: SimpleNamespace, files: list[dict]) -> None:
    """The client function directly, with no backoff, so the test costs only its own short timeouts."""
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, hang=True) as server:
        with pytest.raises(ApiError) as info:
            fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=0.2, retries=1, backoff=0)
        assert "gave up after 2 attempts" in str(info.value) and "Timeout" in str(info.value)
        assert API_PASSWORD not in str(info.value)
        assert len(server.requests) == 2


def test_client_retries_5xx_without_backoff(ega_api: SimpleNamespace, files: list[dict]) -> None:
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=3) as server:
        text = fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=3, backoff=0)
        assert json.loads(text) == files
        assert [q["status"] for q in server.requests] == [500, 500, 500, 200]
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, always_status=401) as server:
        with pytest.raises(ApiError, match="HTTP 401"):
            fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=3, backoff=0)
        assert len(server.requests) == 1


def test_fetched_entries_carry_the_transfer_checksum(ega_api: SimpleNamespace, files: list[dict]) -> None:
    """What the register step receives: plaintext md5/sha256 and the encrypted file's checksum apart."""
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD) as server:
        text = fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=0, backoff=0)
    _, entries = manifest.parse_ega_json(text, "api")
    got = [(e["md5"], e["sha256"], e["transfer_checksum"], e["transfer_checksum_type"], e["size"]) for e in entries]
    assert got == [
        (MD5[0], None, ENC_MD5[0], "md5", 5_000_000_000_000),
        (None, SHA[1], ENC_SHA[1], "sha256", 1234),
        (MD5[2], None, ENC_MD5[2], "md5", 99),
    ]


def test_fetched_real_files_are_archived(workspace: Workspace, dbh: SimpleNamespace, ega_api: SimpleNamespace) -> None:
    """The stand-in describes real encrypted files the way EGA does; fetch, register and process them:
    every plaintext checksum verifies (reading `checksum` as the plaintext md5 failed every file)."""
    ws = workspace
    file_of = load_stand_in("ega_api_server.py").ega_file_of
    made = [ws.add_file(f"d/f{i}.bam.c4gh", size, where="processing") for i, size in enumerate((0, 5000, 70_000))]
    objs = [file_of(ws.processing / m["name"], f"EGAF{i}", DATASET, m["name"], m["md5"]) for i, m in enumerate(made)]
    assert all(o["checksum"] != o["unencryptedChecksum"] for o in objs)
    with ega_api.Server({DATASET: objs}, user=API_USER, password=API_PASSWORD) as server:
        env = use_api(ws, server)
        dbh.ok(ws, "fetch-metadata", DATASET, "--register", env=env)
    r = ws.legampi("process", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    files = {f["file_id"]: f for f in dbh.status(ws)["files"]}
    assert {k: (f["status"], f["md5"], f["error"]) for k, f in files.items()} == {
        f"EGAF{i}": ("available", m["md5"], None) for i, m in enumerate(made)
    }


def test_an_answer_over_the_size_bound_is_refused(
    ega_api: SimpleNamespace, files: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API answer is a manifest too: refused by size while it streams, never parsed or saved."""
    monkeypatch.setattr(manifest, "MAX_JSON_BYTES", 100)
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD) as server:
        with pytest.raises(ManifestError, match=r"^EGA API .*: answer of \d+ bytes is over 100; refused$"):
            fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=0, backoff=0)
    chunks = [b"[" + b" " * 59] * 3  # no Content-Length (chunked): counted while it streams
    pulled: list[int] = []
    answer = SimpleNamespace(headers={}, iter_content=lambda n: (pulled.append(1) or c for c in chunks))
    with pytest.raises(ManifestError, match=r"^EGA API u: answer larger than 100 bytes; refused$"):
        manifest._bounded_body(answer, "u")
    assert len(pulled) == 2  # stopped at the chunk that passed the bound


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured(ega_api: SimpleNamespace, files: list[dict], status: int) -> None:
    """With no backoff urllib3 retries at once: the 1 s between the requests is the server's Retry-After."""
    with ega_api.Server(
        {DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=1, fail_status=status, retry_after="1"
    ) as server:
        text = fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=2, backoff=0)
        assert json.loads(text) == files
        assert [q["status"] for q in server.requests] == [status, 200]
        assert server.times[1] - server.times[0] >= 0.9


def test_a_huge_retry_after_is_capped(
    ega_api: SimpleNamespace, files: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server asking for a day's wait does not hold the command (or a batch job) for a day."""
    monkeypatch.setattr(httpretry, "RETRY_AFTER_MAX", 0.5)
    with ega_api.Server(
        {DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=1, fail_status=503, retry_after="86400"
    ) as server:
        fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=1, backoff=0)
        assert [q["status"] for q in server.requests] == [503, 200]
        assert 0.4 <= server.times[1] - server.times[0] < 5


def test_too_many_5xx_name_the_url_without_credentials(ega_api: SimpleNamespace, files: list[dict]) -> None:
    """Credentials in the URL (user:password@, or a key in the query) never reach the error."""
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, fail_first=100, fail_status=502) as s:
        url = s.api_url.replace("http://", f"http://{API_USER}:{API_PASSWORD}@") + "?apikey=Query-Secret-77"
        with pytest.raises(ApiError) as info:
            fetch_metadata(url, DATASET, None, None, timeout=5, retries=2, backoff=0)
        msg = str(info.value)
        path = f"/elixir/data/metadata/datasets/{DATASET}/files"
        assert msg == f"EGA API {s.base}{path}: gave up after 3 attempts, last error: HTTP 502 Bad Gateway"
        assert API_PASSWORD not in msg and API_USER not in msg and "Query-Secret-77" not in msg
        assert [q["status"] for q in s.requests] == [502, 502, 502]
        assert all(q["user"] == API_USER and q["password_ok"] for q in s.requests)  # auth from the URL still used


def test_a_final_status_is_not_retried(ega_api: SimpleNamespace, files: list[dict]) -> None:
    with ega_api.Server({DATASET: files}, user=API_USER, password=API_PASSWORD, always_status=501) as server:
        with pytest.raises(ApiError, match=r"HTTP 501 Not Implemented$"):
            fetch_metadata(server.api_url, DATASET, API_USER, API_PASSWORD, timeout=5, retries=3, backoff=0)
        assert len(server.requests) == 1
