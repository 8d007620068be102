"""Before a job claims anything: does the configuration hold every key its files need?

A missing inbox key, legacy password or GnuPG passphrase is the operator's problem, not the files': if
it were found file by file, every file would fail (and be quarantined) for it. Rank 0 therefore lists
the files the job is about to process, asks `missing` what their formats need that the configuration
lacks, and refuses to start, naming it, before any file changes status or folder. What can only be
seen at run time (a wrong passphrase) comes back as failure kind `config` and stops the job the same
way (legampi.ingest). With an S3 archive the server is asked first (`archive_problems`): credentials
that are missing or refused, a bucket that does not exist or an endpoint that does not answer stop the
job the same way, before anything is claimed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from legampi.formats import IngestError, detect_format

# Suffixes of a format as the operator knows them, for messages ("12 .c4gh file(s)").
Needs = Mapping[str, Counter]  # format -> Counter of suffixes seen (".c4gh": 12)


def needs(names: Iterable[str], extensions: Iterable[str]) -> dict[str, Counter]:
    """Which formats NAMES are in, with how many files of each suffix (pure: names only)."""
    exts = tuple(extensions)
    out: dict[str, Counter] = {}
    for name in names:
        try:
            fmt = detect_format(name, exts)
        except IngestError:
            continue  # refused as `format` when processed: the file's own problem, needs no key
        base = name.rsplit("/", 1)[-1]
        suffix = base[base.rfind(".") :].lower() if base.rfind(".") > 0 else ""
        out.setdefault(fmt, Counter())[suffix] += 1
    return out


def _count(c: Counter) -> str:
    return ", ".join(f"{n} {suffix or 'plain'} file(s)" for suffix, n in sorted(c.items()))


def missing(
    found: Needs, crypto: Any, gnupg_keys: list[bool] | None = None, gnupg_source: Path | None = None
) -> list[str]:
    """What the configuration lacks for the formats FOUND, one sentence each (pure).

    CRYPTO is legampi.config's CryptoConfig (attribute names are the contract). GNUPG_KEYS lists the
    secret keys of the GnuPG home (True: passphrase-protected), None when that home does not exist;
    GNUPG_SOURCE is that home, for the message.
    """
    out = []
    local = crypto.decrypt_via == "local"
    if found.get("crypt4gh") and crypto.inbox_secret_key is None:
        out.append(f"[crypto] inbox_secret_key is not set, needed by {_count(found['crypt4gh'])}")
    if found.get("legacy_aes") and local and crypto.legacy_password is None:
        out.append(
            f"the legacy password is not set (export ${crypto.legacy_password_env}, or set [crypto] "
            f"legacy_password_file), needed by {_count(found['legacy_aes'])}"
        )
    if found.get("openpgp") and local:
        files = _count(found["openpgp"])
        no_pass = crypto.gpg_passphrase is None
        if gnupg_keys is None:
            where = "[crypto] gnupg_home" + (" is not set" if crypto.gnupg_home is None else " does not exist")
            out.append(f"{where} and there is no GnuPG home at {gnupg_source}, needed by {files}")
        elif not gnupg_keys and no_pass:
            out.append(f"GnuPG home {gnupg_source} holds no secret key ([crypto] gnupg_home), needed by {files}")
        elif gnupg_keys and all(gnupg_keys) and no_pass:
            out.append(
                f"the GnuPG passphrase is not set (export ${crypto.gpg_passphrase_env}, or set [crypto] "
                f"gpg_passphrase_file) and every secret key in {gnupg_source} needs one, needed by {files}"
            )
    return out


def check(names: Iterable[str], cfg: Any) -> list[str]:
    """`missing` for the files NAMES under configuration CFG, looking into the GnuPG home if needed."""
    found = needs(names, cfg.func.extensions)
    keys: list[bool] | None = None
    source = None
    if found.get("openpgp") and cfg.crypto.decrypt_via == "local":
        from legampi.formats import openpgp

        source = openpgp.source_home(cfg.crypto.gnupg_home)
        if source.is_dir():
            try:
                keys = openpgp.secret_keys(source)
            except OSError as e:
                return [f"cannot read the secret keys of GnuPG home {source}: {e.strerror or type(e).__name__}"]
    return missing(found, cfg.crypto, keys, source)


def archive_problems(cfg: Any) -> list[str]:
    """What stops an S3 archive from taking files (credentials, bucket, endpoint), one sentence each; []
    for the folder archive. Never shows a secret: refusals name the access key and where it came from."""
    arch = getattr(cfg, "archive", None)
    if arch is None or arch.backend != "s3":
        return []
    from legampi.s3config import ArchiveConfigError
    from legampi.storage import s3_store

    try:
        s3_store(arch).check()
    except ArchiveConfigError as exc:
        return [f"[archive] backend = s3: {exc.message}"]
    except IngestError as exc:
        return [f"[archive] backend = s3: {exc.message}"]
    return []


def job_problems(db: Any, cfg: Any, retry_failed: bool = False, dataset: str | None = None) -> list[str]:
    """`check` for the files in processing that a `process` job would claim, without claiming any.

    The listing alone is checked first: when it needs nothing missing (the usual case) the database
    is not asked. Otherwise only registered, eligible files count (an unregistered or `available`
    file is left alone by the job, so it must not stop it). Branches and --limit are not applied: a
    key missing for a sibling array task's files is missing for this configuration too.
    """
    from legampi.archive import is_temp_name
    from legampi.db import chunks
    from legampi.workspace import scan

    if problems := archive_problems(cfg):
        return problems
    names = [n for n, _st in scan(cfg.workspaces.processing) if not is_temp_name(n)]
    if not check(names, cfg):
        return []
    eligible = {"pending", "received"} | ({"failed"} if retry_failed else set())
    wanted = []
    for chunk in chunks(names, 1000):
        for r in db.files(names=chunk, columns=("file_name", "dataset_id", "status")):
            if r["status"] in eligible and (dataset is None or r["dataset_id"] == dataset):
                wanted.append(r["file_name"])
    return check(wanted, cfg)
