"""Configuration: one INI file (seed-compatible sections), validated before anything is touched.

Every error names the file, the section and the key, so an operator can fix it without reading code.
Secrets are never stored in the INI in clear if it can be avoided: each secret may come from an
environment variable (``*_env`` keys, with defaults) or a file (``*_file`` keys). They are wrapped in
:class:`Secret`, whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

from .config_ini import ConfigError, IniReader, Secret
from .s3config import ArchiveConfig, ArchiveConfigError, from_section

ENV_CONFIG = "LEGAMPI_CONFIG"

SECTIONS = ("database", "func_conf", "api", "workspaces", "crypto", "archive")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str  # sqlite:///ABS/PATH or postgresql://user@host:port/db (never contains the password)
    password: Secret | None = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"


@dataclass(frozen=True)
class FuncConfig:
    chunk_size: int = 1024 * 1024
    age_limit: int = 300
    pass_limit: int = 3
    extensions: tuple[str, ...] = (".c4gh", ".cip", ".gpg")
    res_url: str | None = None
    claim_timeout: int = 600
    batch_size: int = 200
    flush_interval: float = 5.0
    group_files: int = 64  # small files a worker makes durable together (issue 15); 0: one at a time
    threads_per_file: str = "auto"  # '1', '2', '3' or 'auto': one Crypt4GH file's stages on threads (spread.py)


@dataclass(frozen=True)
class ApiConfig:
    api_url: str | None = None
    api_user: str | None = None
    api_pass: Secret | None = field(default=None, repr=False)
    timeout: float = 30.0
    retries: int = 3


@dataclass(frozen=True)
class Workspaces:
    receiving: Path
    processing: Path
    end_storage: Path | None  # required with [archive] backend = posix (the default); optional with s3
    metadata: Path | None = None
    quarantine: Path | None = None
    keep_processed: bool = False


@dataclass(frozen=True)
class CryptoConfig:
    archive_public_key: Path
    inbox_secret_key: Path | None = None
    inbox_passphrase: Secret | None = field(default=None, repr=False)
    archive_secret_key: Path | None = None
    archive_passphrase: Secret | None = field(default=None, repr=False)
    reencrypt: str = "full"
    archive_checksum: str = "sha256"
    legacy_password: Secret | None = field(default=None, repr=False)
    legacy_cipher: str = "aes128"
    gnupg_home: Path | None = None
    gpg_passphrase: Secret | None = field(default=None, repr=False)
    decrypt_via: str = "local"
    res_source_format: str = "aes128"
    res_source_key: str | None = None
    file_mode: int = 0o640
    # where the secrets above are looked for, to name them when they are missing (legampi.preflight)
    legacy_password_env: str = "LEGAMPI_LEGACY_PASSWORD"
    gpg_passphrase_env: str = "LEGAMPI_GPG_PASSPHRASE"


@dataclass(frozen=True)
class Config:
    path: Path | None
    database: DatabaseConfig
    func: FuncConfig
    api: ApiConfig
    workspaces: Workspaces
    crypto: CryptoConfig
    archive: ArchiveConfig = ArchiveConfig()  # [archive]: the folder end_storage (posix) or an S3 bucket


def _database(r: IniReader) -> DatabaseConfig:
    password = r.secret("database", "passwd", "LEGAMPI_DB_PASSWORD")
    url = r.str("database", "url")
    if url is None:
        host = r.str("database", "host")
        if host is None:
            raise r.err(
                "database",
                "url",
                "missing: give url = sqlite:///ABSOLUTE/PATH or "
                "postgresql://USER@HOST:PORT/DB (or the seed's host/user/db keys)",
            )
        user = r.str("database", "user", "")
        db = r.str("database", "db", required=True)
        port = r.int("database", "port", 5432, 1)
        auth = f"{quote(user or '', safe='')}@" if user else ""
        url = f"postgresql://{auth}{host}:{port}/{quote(db or '', safe='')}"
    if url.startswith("sqlite:///"):
        target = url[len("sqlite:///") :]
        if not target.startswith("/"):
            raise r.err("database", "url", f"SQLite path must be absolute (sqlite:////abs/path.db), got {url!r}")
        parent = Path(target).parent
        if not parent.is_dir():
            raise r.err("database", "url", f"folder of the SQLite database does not exist: {parent}")
    elif url.startswith(("postgresql://", "postgres://")):
        rest = url.split("://", 1)[1]
        userinfo = rest.split("@", 1)[0] if "@" in rest else ""
        if ":" in userinfo:
            raise r.err("database", "url", "must not contain a password; use passwd_env or passwd_file")
    else:
        raise r.err("database", "url", "must start with sqlite:/// or postgresql://")
    return DatabaseConfig(url=url, password=password)


def _func(r: IniReader) -> FuncConfig:
    raw_ext = r.str("func_conf", "extensions", ".c4gh,.cip,.gpg") or ""
    exts = tuple(e.strip() for e in raw_ext.split(",") if e.strip())
    for e in exts:
        if not e.startswith(".") or "/" in e:
            raise r.err("func_conf", "extensions", f"each extension must look like .c4gh, got {e!r}")
    return FuncConfig(
        chunk_size=r.int("func_conf", "chunk_size", FuncConfig.chunk_size, 4096),
        age_limit=r.int("func_conf", "age_limit", FuncConfig.age_limit),
        pass_limit=r.int("func_conf", "pass_limit", FuncConfig.pass_limit, 1),
        extensions=exts,
        res_url=r.str("func_conf", "res_url"),
        claim_timeout=r.int("func_conf", "claim_timeout", FuncConfig.claim_timeout, 1),
        batch_size=r.int("func_conf", "batch_size", FuncConfig.batch_size, 1),
        flush_interval=r.float("func_conf", "flush_interval", FuncConfig.flush_interval),
        group_files=r.int("func_conf", "group_files", FuncConfig.group_files, 0),
        threads_per_file=_threads_per_file(r),
    )


def _threads_per_file(r: IniReader) -> str:
    raw = (r.str("func_conf", "threads_per_file") or FuncConfig.threads_per_file).strip().lower()
    if raw != "auto" and not (raw.isdigit() and int(raw) >= 1):
        raise r.err("func_conf", "threads_per_file", f"must be auto or a number of threads (1, 2, 3), got {raw!r}")
    return raw if raw == "auto" else str(int(raw))


def _api(r: IniReader) -> ApiConfig:
    url = r.str("api", "api_url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise r.err("api", "api_url", f"must be an http(s) URL, got {url!r}")
    return ApiConfig(
        api_url=url,
        api_user=r.str("api", "api_user"),
        api_pass=r.secret("api", "api_pass", "LEGAMPI_API_PASSWORD"),
        timeout=r.float("api", "timeout", ApiConfig.timeout),
        retries=r.int("api", "retries", ApiConfig.retries),
    )


def _archive(r: IniReader) -> ArchiveConfig:
    """[archive] (absent: the folder); every refusal names its key. Credentials are checked by preflight."""
    values = dict(r.p.items("archive")) if r.p.has_section("archive") else {}
    try:
        return from_section(values)
    except ArchiveConfigError as exc:
        raise r.err("archive", exc.key, exc.message) from None


def _workspaces(r: IniReader) -> Workspaces:
    s3 = (r.str("archive", "backend", "posix") or "posix").lower() == "s3"  # then end_storage is optional

    def folder(key: str, required: bool) -> Path | None:
        p = r.path("workspaces", key, required=required)
        if p is None:
            return None
        if not p.is_dir():
            raise r.err("workspaces", key, f"folder does not exist: {p}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise r.err("workspaces", key, f"folder is not writable: {p}")
        return p

    ws = Workspaces(
        receiving=folder("receiving", True),  # type: ignore[arg-type]
        processing=folder("processing", True),  # type: ignore[arg-type]
        end_storage=folder("end_storage", not s3),
        metadata=folder("metadata", False),
        quarantine=folder("quarantine", False),
        keep_processed=r.bool("workspaces", "keep_processed", False),
    )
    seen: dict[Path, str] = {}
    for key in ("receiving", "processing", "end_storage", "quarantine", "metadata"):
        p = getattr(ws, key)
        if p is None:
            continue
        real = p.resolve()
        if real in seen and not {key, seen[real]} <= {"metadata", "receiving"}:
            raise r.err("workspaces", key, f"is the same folder as {seen[real]} ({real})")
        seen.setdefault(real, key)
    return ws


def _crypto(r: IniReader) -> CryptoConfig:
    def key_file(key: str, required: bool = False) -> Path | None:
        p = r.path("crypto", key, required=required)
        if p is not None and not p.is_file():
            raise r.err("crypto", key, f"key file does not exist: {p}")
        return p

    mode_raw = r.str("crypto", "file_mode", "0640") or "0640"
    try:
        file_mode = int(mode_raw, 8)
    except ValueError:
        raise r.err("crypto", "file_mode", f"must be an octal mode like 0640, got {mode_raw!r}") from None
    if file_mode & ~0o777 or file_mode & 0o002:
        raise r.err("crypto", "file_mode", f"must be a permission mode not writable by others, got {mode_raw}")
    c = CryptoConfig(
        archive_public_key=key_file("archive_public_key", required=True),  # type: ignore[arg-type]
        inbox_secret_key=key_file("inbox_secret_key"),
        inbox_passphrase=r.secret("crypto", "inbox_passphrase", "LEGAMPI_INBOX_PASSPHRASE"),
        archive_secret_key=key_file("archive_secret_key"),
        archive_passphrase=r.secret("crypto", "archive_passphrase", "LEGAMPI_ARCHIVE_PASSPHRASE"),
        reencrypt=r.choice("crypto", "reencrypt", "full", ("full", "header")),
        archive_checksum=r.choice("crypto", "archive_checksum", "sha256", ("sha256", "md5")),
        legacy_password=r.secret("crypto", "legacy_password", "LEGAMPI_LEGACY_PASSWORD"),
        legacy_cipher=r.choice("crypto", "legacy_cipher", "aes128", ("aes128", "aes256")),
        gnupg_home=r.path("crypto", "gnupg_home"),
        gpg_passphrase=r.secret("crypto", "gpg_passphrase", "LEGAMPI_GPG_PASSPHRASE"),
        decrypt_via=r.choice("crypto", "decrypt_via", "local", ("local", "res")),
        res_source_format=r.str("crypto", "res_source_format", "aes128") or "aes128",
        res_source_key=r.str("crypto", "res_source_key"),
        file_mode=file_mode,
        legacy_password_env=r.str("crypto", "legacy_password_env", "LEGAMPI_LEGACY_PASSWORD") or "",
        gpg_passphrase_env=r.str("crypto", "gpg_passphrase_env", "LEGAMPI_GPG_PASSPHRASE") or "",
    )
    if c.gnupg_home is not None and not c.gnupg_home.is_dir():
        raise r.err("crypto", "gnupg_home", f"folder does not exist: {c.gnupg_home}")
    if c.decrypt_via == "res" and not r.str("func_conf", "res_url"):  # FuncConfig.res_url, read the same way
        raise r.err("func_conf", "res_url", "required when [crypto] decrypt_via = res")
    return c


def load(
    path: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    sections: Iterable[str] = SECTIONS,
    optional: Iterable[str] = (),
) -> Config:
    """Load the configuration from PATH or $LEGAMPI_CONFIG; the SECTIONS a command needs are validated now,
    and the OPTIONAL ones it uses when they are there (if the file has them).

    A read-only command (`status`, `report`...) asks only for what it uses, so a host without the crypto
    keys or the workspaces can still run it. The other sections are read too, but a problem in one of them
    is raised (the same ConfigError) only when the command touches that section, never before.
    """
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get(ENV_CONFIG)
    if not path:
        raise ConfigError(None, None, None, f"no configuration: give -c PATH or set {ENV_CONFIG}")
    cfg_path = Path(path).absolute()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(cfg_path, None, None, f"cannot read: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(cfg_path, None, None, f"not a valid INI file: {exc.message}") from None
    needed = set(sections) | {s for s in optional if parser.has_section(s)}
    if unknown := (needed | set(optional)) - set(SECTIONS):
        raise ValueError(f"unknown configuration sections {sorted(unknown)}")
    r = IniReader(parser, cfg_path, env)
    for section in ("database", "workspaces", "crypto"):
        if section in needed and not parser.has_section(section):
            raise ConfigError(cfg_path, section, None, "missing section")
    # checked in this order: func_conf, crypto (with its res_url cross-check), database, api, workspaces
    func = _section(r, "func_conf", _func, needed)
    crypto = _section(r, "crypto", _crypto, needed)
    arch = _section(r, "archive", _archive, needed)
    if isinstance(arch, ArchiveConfig):
        from .storage import remember  # a row's s3:// location opens with this [archive] (storage.store_at)

        remember(arch)
    return Config(
        path=cfg_path,
        database=_section(r, "database", _database, needed),
        func=func,
        api=_section(r, "api", _api, needed),
        workspaces=_section(r, "workspaces", _workspaces, needed),
        crypto=crypto,
        archive=arch,
    )


class _Unusable:
    """A section the command did not need and that does not validate: touching it raises its ConfigError."""

    __slots__ = ("_error",)

    def __init__(self, error: ConfigError):
        self._error = error

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_error":  # copy/pickle probing, or not yet initialised
            raise AttributeError(name)
        raise ConfigError(self._error.path, self._error.section, self._error.key, self._error.message)

    def __repr__(self) -> str:
        return f"<unusable: {self._error}>"


T = TypeVar("T")


def _section(r: IniReader, name: str, read: Callable[[IniReader], T], needed: set[str]) -> T:
    """The section read by READ; its problem raised now if the command needs it, else kept for first use."""
    try:
        if name in ("database", "workspaces", "crypto") and not r.p.has_section(name):
            raise ConfigError(r.file, name, None, "missing section")
        return read(r)
    except ConfigError as exc:
        if name in needed:
            raise
        return cast(T, _Unusable(exc))
