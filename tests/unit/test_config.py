"""Configuration loading: every refusal names the file, section and key, and secrets never leak."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from legampi import config
from legampi.config import ConfigError

LEGAMPI = str(Path(sys.executable).parent / "legampi")
DB_SECRET = "Db-Pw-Quokka-7741"
INBOX_SECRET = "Inbox-Pass-Narwhal-5520"
API_SECRET = "Api-Pw-Axolotl-3308"


def layout(tmp_path: Path) -> dict[str, Path]:
    """Folders and a (fake) public key file: config loading only checks that they exist."""
    paths = {k: tmp_path / k for k in ("receiving", "processing", "archive", "metadata")}
    for p in paths.values():
        p.mkdir()
    paths["pub"] = tmp_path / "archive.pub"
    paths["pub"].write_text("not parsed by config\n")
    paths["db"] = tmp_path / "tracking.db"
    return paths


def ini(
    p: dict[str, Path],
    database: str | None = None,
    func: str = "",
    workspaces: str | None = None,
    crypto: str | None = None,
    extra: str = "",
) -> str:
    database = database if database is not None else f"url = sqlite:///{p['db']}"
    workspaces = (
        workspaces
        if workspaces is not None
        else (
            f"receiving = {p['receiving']}\nprocessing = {p['processing']}\nend_storage = {p['archive']}\n"
            f"metadata = {p['metadata']}"
        )
    )
    crypto = crypto if crypto is not None else f"archive_public_key = {p['pub']}"
    return (
        f"[database]\n{database}\n\n[func_conf]\n{func}\n\n[workspaces]\n{workspaces}\n\n[crypto]\n{crypto}\n{extra}\n"
    )


def write(tmp_path: Path, text: str, name: str = "legampi.ini") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.load(path, env=env or {})
    return info.value


def test_valid_config_defaults_to_embedded_sqlite(tmp_path: Path) -> None:
    p = layout(tmp_path)
    cfg = config.load(write(tmp_path, ini(p)), env={})
    assert cfg.database.backend == "sqlite"
    assert cfg.database.url == f"sqlite:///{p['db']}"
    assert cfg.workspaces.receiving == p["receiving"]
    assert cfg.func.age_limit == 300 and cfg.func.pass_limit == 3
    assert cfg.database.password is None


def test_config_from_environment_variable(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, func="age_limit = 17"))
    assert config.load(None, env={config.ENV_CONFIG: str(path)}).func.age_limit == 17
    other = write(tmp_path, ini(p, func="age_limit = 23"), "other.ini")
    # an explicit path wins over the environment variable
    assert config.load(other, env={config.ENV_CONFIG: str(path)}).func.age_limit == 23


def test_no_config_at_all_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, env={})
    assert "-c PATH" in str(info.value) and config.ENV_CONFIG in str(info.value)


def test_unreadable_and_invalid_ini_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    assert str(missing) in str(refused(missing)) and "cannot read" in str(refused(missing))
    broken = write(tmp_path, "this is not = an ini file\n[database\n")
    e = refused(broken)
    assert str(broken) in str(e) and "not a valid INI file" in str(e)


@pytest.mark.parametrize("section", ["database", "workspaces", "crypto"])
def test_missing_section(tmp_path: Path, section: str) -> None:
    p = layout(tmp_path)
    text = ini(p).replace(f"[{section}]", "[something_else]")
    path = write(tmp_path, text)
    e = refused(path)
    assert (e.path, e.section, e.key) == (path, section, None)
    assert str(e) == f"{path}: [{section}]: missing section"


@pytest.mark.parametrize("key", ["receiving", "processing", "end_storage"])
def test_missing_required_workspace_key(tmp_path: Path, key: str) -> None:
    p = layout(tmp_path)
    ws = "\n".join(
        line for line in ini(p).split("[workspaces]\n")[1].split("\n\n")[0].splitlines() if not line.startswith(key)
    )
    path = write(tmp_path, ini(p, workspaces=ws))
    e = refused(path)
    assert (e.section, e.key) == ("workspaces", key)
    assert str(e) == f"{path}: [workspaces] {key}: missing (required)"


def test_missing_archive_public_key_and_missing_database_url(tmp_path: Path) -> None:
    p = layout(tmp_path)
    e = refused(write(tmp_path, ini(p, crypto="reencrypt = full")))
    assert (e.section, e.key) == ("crypto", "archive_public_key") and "missing" in str(e)
    e = refused(write(tmp_path, ini(p, database="")))
    assert (e.section, e.key) == ("database", "url") and "sqlite:///" in str(e) and "postgresql://" in str(e)


@pytest.mark.parametrize(
    ("section", "line", "key", "words"),
    [
        ("func_conf", "age_limit = soon", "age_limit", "whole number"),
        ("func_conf", "pass_limit = 0", "pass_limit", "at least 1"),
        ("func_conf", "chunk_size = 12", "chunk_size", "at least 4096"),
        ("func_conf", "flush_interval = fast", "flush_interval", "must be a number"),
        ("func_conf", "threads_per_file = many", "threads_per_file", "auto or a number"),
        ("func_conf", "threads_per_file = 0", "threads_per_file", "auto or a number"),
        ("func_conf", "extensions = c4gh", "extensions", "look like .c4gh"),
        ("workspaces", "keep_processed = maybe", "keep_processed", "yes or no"),
        ("crypto", "reencrypt = partial", "reencrypt", "one of full, header"),
        ("crypto", "file_mode = 0666", "file_mode", "not writable by others"),
        ("crypto", "file_mode = rw-r-----", "file_mode", "octal mode"),
        ("api", "api_url = ftp://example.invalid/DATASETID", "api_url", "http(s) URL"),
        ("api", "timeout = -1", "timeout", "must not be negative"),
        ("database", "port = http", "port", "whole number"),
    ],
)
def test_wrong_type_names_file_section_and_key(tmp_path: Path, section: str, line: str, key: str, words: str) -> None:
    p = layout(tmp_path)
    if section == "database":
        text = ini(p, database=f"host = 127.0.0.1\ndb = test\n{line}")
    elif section == "api":
        text = ini(p, extra=f"\n[api]\n{line}\n")
    else:
        text = ini(p).replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    path = write(tmp_path, text)
    e = refused(path)
    assert (e.path, e.section, e.key) == (path, section, key)
    assert str(e).startswith(f"{path}: [{section}] {key}: ") and words in str(e)


def test_threads_per_file_defaults_to_auto_and_reaches_the_pipeline(tmp_path: Path) -> None:
    p = layout(tmp_path)
    assert config.load(write(tmp_path, ini(p)), env={}).func.threads_per_file == "auto"
    text = ini(p).replace("[func_conf]\n", "[func_conf]\nthreads_per_file = 03\n")
    assert config.load(write(tmp_path, text), env={}).func.threads_per_file == "3"


def test_workspace_folder_that_does_not_exist(tmp_path: Path) -> None:
    p = layout(tmp_path)
    gone = tmp_path / "no" / "such" / "folder"
    path = write(tmp_path, ini(p).replace(f"processing = {p['processing']}", f"processing = {gone}"))
    e = refused(path)
    assert (e.section, e.key) == ("workspaces", "processing")
    assert str(gone) in str(e) and "does not exist" in str(e)
    assert not gone.exists()  # not created behind the operator's back


def test_workspace_that_is_a_file_not_a_folder(tmp_path: Path) -> None:
    p = layout(tmp_path)
    a_file = tmp_path / "archive-file"
    a_file.write_text("x")
    path = write(tmp_path, ini(p).replace(f"end_storage = {p['archive']}", f"end_storage = {a_file}"))
    e = refused(path)
    assert (e.section, e.key) == ("workspaces", "end_storage") and str(a_file) in str(e)
    assert a_file.read_text() == "x"


def test_relative_workspace_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, workspaces="receiving = receiving\nprocessing = ./processing\nend_storage = archive"))
    cfg = config.load(path, env={})
    assert cfg.workspaces.processing == p["processing"] and cfg.workspaces.end_storage == p["archive"]


def test_two_workspaces_that_are_the_same_folder(tmp_path: Path) -> None:
    p = layout(tmp_path)
    text = ini(p).replace(f"end_storage = {p['archive']}", f"end_storage = {p['processing']}")
    path = write(tmp_path, text)
    e = refused(path)
    assert (e.section, e.key) == ("workspaces", "end_storage")
    assert "same folder as processing" in str(e)
    # the same folder reached through a symbolic link is still the same folder
    (tmp_path / "alias").symlink_to(p["receiving"])
    text = ini(p).replace(f"processing = {p['processing']}", f"processing = {tmp_path / 'alias'}")
    path = write(tmp_path, text)
    e = refused(path)
    assert (e.section, e.key) == ("workspaces", "processing") and "same folder as receiving" in str(e)


def test_sqlite_url_must_be_absolute_and_its_folder_must_exist(tmp_path: Path) -> None:
    p = layout(tmp_path)
    e = refused(write(tmp_path, ini(p, database="url = sqlite:///relative/tracking.db")))
    assert (e.section, e.key) == ("database", "url") and "absolute" in str(e)
    e = refused(write(tmp_path, ini(p, database=f"url = sqlite:///{tmp_path}/missing/tracking.db")))
    assert (e.section, e.key) == ("database", "url") and "does not exist" in str(e)
    e = refused(write(tmp_path, ini(p, database="url = mysql://db.invalid/x")))
    assert (e.section, e.key) == ("database", "url") and "sqlite:///" in str(e)


def test_postgresql_url_selects_postgresql(tmp_path: Path) -> None:
    p = layout(tmp_path)
    cfg = config.load(write(tmp_path, ini(p, database="url = postgresql://legampi@db.invalid:5433/tracking")), env={})
    assert cfg.database.backend == "postgresql"
    assert cfg.database.url == "postgresql://legampi@db.invalid:5433/tracking"


def test_seed_host_user_passwd_db_keys_select_postgresql(tmp_path: Path) -> None:
    p = layout(tmp_path)
    seed = f"host = db.invalid\nuser = lega\npasswd = {DB_SECRET}\ndb = lega"
    path = write(tmp_path, ini(p, database=seed))
    cfg = config.load(path, env={})
    assert cfg.database.backend == "postgresql"
    assert cfg.database.url == "postgresql://lega@db.invalid:5432/lega"
    assert cfg.database.password is not None and cfg.database.password.reveal() == DB_SECRET
    assert DB_SECRET not in repr(cfg) and DB_SECRET not in str(cfg.database.password)
    e = refused(write(tmp_path, ini(p, database="host = db.invalid\nuser = lega")))
    assert (e.section, e.key) == ("database", "db")


def test_password_inside_the_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    p = layout(tmp_path)
    e = refused(write(tmp_path, ini(p, database=f"url = postgresql://lega:{DB_SECRET}@db.invalid/lega")))
    assert (e.section, e.key) == ("database", "url") and "passwd_env" in str(e)
    assert DB_SECRET not in str(e)


def test_secrets_from_env_and_files_never_show(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = layout(tmp_path)
    pw_file = tmp_path / "db.pass"
    pw_file.write_text(DB_SECRET + "\n")
    database = f"url = postgresql://lega@db.invalid/lega\npasswd_file = {pw_file}"
    path = write(
        tmp_path,
        ini(
            p,
            database=database,
            extra="\n[api]\napi_url = http://127.0.0.1:9/DATASETID\napi_user = u\napi_pass_env = MY_API_PW\n",
        ),
    )
    env = {"LEGAMPI_INBOX_PASSPHRASE": INBOX_SECRET, "MY_API_PW": API_SECRET}
    cfg = config.load(path, env=env)
    assert cfg.database.password is not None
    assert cfg.database.password.reveal() == DB_SECRET  # newline stripped
    assert cfg.crypto.inbox_passphrase is not None and cfg.crypto.inbox_passphrase.reveal() == INBOX_SECRET
    assert cfg.api.api_pass is not None and cfg.api.api_pass.reveal() == API_SECRET
    assert "MY_API_PW" in repr(cfg.api.api_pass)  # says where it came from
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("legampi.test").info("config %s %r %s", cfg, cfg, cfg.api.api_pass)
    shown = " ".join(
        [
            repr(cfg),
            str(cfg),
            repr(cfg.database),
            repr(cfg.crypto),
            repr(cfg.api),
            str(cfg.database.password),
            repr(cfg.crypto.inbox_passphrase),
            caplog.text,
        ]
    )
    for secret in (DB_SECRET, INBOX_SECRET, API_SECRET):
        assert secret not in shown
    with pytest.raises(TypeError):
        pickle.dumps(cfg.api.api_pass)


def test_default_secret_environment_variable_names(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, database="url = postgresql://lega@db.invalid/lega"))
    cfg = config.load(path, env={"LEGAMPI_DB_PASSWORD": DB_SECRET, "LEGAMPI_API_PASSWORD": API_SECRET})
    assert cfg.database.password is not None and cfg.database.password.reveal() == DB_SECRET
    assert cfg.api.api_pass is not None and cfg.api.api_pass.reveal() == API_SECRET
    assert config.load(path, env={}).database.password is None


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(
        tmp_path, ini(p, database=f"url = postgresql://lega@db.invalid/lega\npasswd_file = {tmp_path / 'absent.pass'}")
    )
    e = refused(path)
    assert (e.section, e.key) == ("database", "passwd_file") and "absent.pass" in str(e)


def test_cli_config_error_exits_2_before_anything_is_touched(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, func="pass_limit = often"))
    before = sorted(x.relative_to(tmp_path) for x in tmp_path.rglob("*"))
    proc = subprocess.run([LEGAMPI, "-c", str(path), "init-db"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}: [func_conf] pass_limit: must be a whole number" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one clear line, no traceback
    assert not p["db"].exists()
    assert sorted(x.relative_to(tmp_path) for x in tmp_path.rglob("*")) == before
    # the same through LEGAMPI_CONFIG
    env = dict(os.environ, LEGAMPI_CONFIG=str(path))
    proc = subprocess.run([LEGAMPI, "init-db"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "[func_conf] pass_limit" in proc.stderr and not p["db"].exists()


def test_cli_refuses_a_workspace_that_is_not_writable(tmp_path: Path) -> None:
    """Tests run as root, for whom permission bits do not matter: use a read-only bind mount instead.

    The mount lives in a private mount namespace (`unshare -m`) that ends with the command.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare not installed: cannot make a read-only folder for root")
    p = layout(tmp_path)
    path = write(tmp_path, ini(p))
    target = str(p["processing"])
    script = (
        f'mount --bind "{target}" "{target}" && '
        f'mount -o remount,ro,bind "{target}" "{target}" || exit 99\n'
        f'exec "{LEGAMPI}" -c "{path}" init-db'
    )
    proc = subprocess.run([unshare, "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: [workspaces] processing: folder is not writable: {target}" in proc.stderr
    assert not p["db"].exists()


def test_a_command_can_load_only_the_sections_it_needs(tmp_path: Path) -> None:
    """`status` on a host without the keys or folders: what it does not need is not checked up front."""
    p = layout(tmp_path)
    text = ini(p, crypto="archive_public_key = /nowhere/archive.pub").replace("[workspaces]", "[elsewhere]")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError):
        config.load(path, env={})  # every section, as before
    cfg = config.load(path, env={}, sections=("database",))
    assert cfg.database.url == f"sqlite:///{p['db']}" and cfg.func.age_limit == 300
    # touching a section it did not need raises that section's own error, naming file, section and key
    with pytest.raises(ConfigError) as info:
        _ = cfg.crypto.archive_public_key
    assert str(info.value) == f"{path}: [crypto] archive_public_key: key file does not exist: /nowhere/archive.pub"
    with pytest.raises(ConfigError) as info:
        _ = cfg.workspaces.receiving
    assert (info.value.section, info.value.key, str(info.value)) == (
        "workspaces",
        None,
        f"{path}: [workspaces]: missing section",
    )


def test_needed_sections_are_still_checked_first(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, database="url = sqlite:///relative.db").replace("[crypto]", "[other]"))
    with pytest.raises(ConfigError) as info:
        config.load(path, env={}, sections=("database",))
    assert (info.value.section, info.value.key) == ("database", "url")
    path = write(tmp_path, ini(p).replace("[database]", "[other]"), name="nodb.ini")
    with pytest.raises(ConfigError) as info:
        config.load(path, env={}, sections=("database",))
    assert str(info.value) == f"{path}: [database]: missing section"
    with pytest.raises(ValueError):
        config.load(path, env={}, sections=("databse",))  # a typo in a command's table row


def test_res_decryption_without_res_url_is_a_crypto_problem_when_crypto_is_not_needed(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, crypto=f"archive_public_key = {p['pub']}\ndecrypt_via = res"))
    assert refused(path).key == "res_url"
    cfg = config.load(path, env={}, sections=("database", "func_conf"))
    with pytest.raises(ConfigError) as info:
        _ = cfg.crypto.decrypt_via
    assert (info.value.section, info.value.key) == ("func_conf", "res_url")


def test_an_optional_section_is_checked_when_the_file_has_it(tmp_path: Path) -> None:
    p = layout(tmp_path)
    path = write(tmp_path, ini(p, workspaces=f"receiving = {tmp_path / 'absent'}"))
    with pytest.raises(ConfigError) as info:
        config.load(path, env={}, sections=("database",), optional=("workspaces",))
    assert (info.value.section, info.value.key) == ("workspaces", "receiving")
    path = write(tmp_path, ini(p).replace("[workspaces]", "[elsewhere]"), name="nows.ini")
    cfg = config.load(path, env={}, sections=("database",), optional=("workspaces",))
    with pytest.raises(ConfigError, match=r"\[workspaces\]: missing section"):
        _ = cfg.workspaces.receiving
