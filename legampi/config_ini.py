"""Typed access to one INI file: every problem becomes a ConfigError naming the file, section and key.

Secrets read through it are wrapped in :class:`Secret`, whose ``repr``/``str`` never show the value.
legampi.config builds its sections on top of this; import these names from there.
"""

from __future__ import annotations

import builtins
import configparser
import os
from pathlib import Path


class ConfigError(Exception):
    """Invalid configuration; the CLI prints it and exits with status 2."""

    def __init__(self, path: Path | str | None, section: str | None, key: str | None, message: str):
        self.path, self.section, self.key, self.message = path, section, key, message
        where = str(path) if path else "<config>"
        if section:
            where += f": [{section}]"
            if key:
                where += f" {key}"
        super().__init__(f"{where}: {message}")


class Secret:
    """A secret string that does not leak through repr, str, logging or exceptions."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source  # e.g. "env LEGAMPI_INBOX_PASSPHRASE" (names the origin, never the value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, from {self.source})"

    __str__ = __repr__

    def __reduce__(self):  # secrets are not pickled to other ranks by accident
        raise TypeError("Secret values are not picklable; pass them explicitly")


class IniReader:
    """Typed access to one parsed INI file that turns every problem into a ConfigError."""

    def __init__(self, parser: configparser.ConfigParser, path: Path | None, env: dict[builtins.str, builtins.str]):
        self.p, self.file, self.env = parser, path, env

    def err(self, section: builtins.str | None, key: builtins.str | None, message: builtins.str) -> ConfigError:
        return ConfigError(self.file, section, key, message)

    def has(self, section: builtins.str, key: builtins.str) -> builtins.bool:
        return self.p.has_option(section, key) and self.p.get(section, key).strip() != ""

    def str(
        self,
        section: builtins.str,
        key: builtins.str,
        default: builtins.str | None = None,
        required: builtins.bool = False,
    ) -> builtins.str | None:
        if self.has(section, key):
            return self.p.get(section, key).strip()
        if required:
            raise self.err(section, key, "missing (required)")
        return default

    def int(
        self, section: builtins.str, key: builtins.str, default: builtins.int, minimum: builtins.int = 0
    ) -> builtins.int:
        raw = self.str(section, key)
        if raw is None:
            return default
        try:
            value = int(raw, 0)
        except ValueError:
            raise self.err(section, key, f"must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise self.err(section, key, f"must be at least {minimum}, got {value}")
        return value

    def float(self, section: builtins.str, key: builtins.str, default: builtins.float) -> builtins.float:
        raw = self.str(section, key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.err(section, key, f"must be a number, got {raw!r}") from None
        if value < 0:
            raise self.err(section, key, f"must not be negative, got {value}")
        return value

    def bool(self, section: builtins.str, key: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.str(section, key)
        if raw is None:
            return default
        if raw.lower() in ("1", "yes", "true", "on"):
            return True
        if raw.lower() in ("0", "no", "false", "off"):
            return False
        raise self.err(section, key, f"must be yes or no, got {raw!r}")

    def choice(
        self, section: builtins.str, key: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        raw = (self.str(section, key) or default).lower()
        if raw not in choices:
            raise self.err(section, key, f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    def path(self, section: builtins.str, key: builtins.str, required: builtins.bool = False) -> Path | None:
        raw = self.str(section, key, required=required)
        if raw is None:
            return None
        p = Path(os.path.expanduser(raw))
        if not p.is_absolute():
            base = self.file.parent if self.file else Path.cwd()
            p = base / p
        return Path(os.path.normpath(p))

    def secret(
        self, section: builtins.str, key: builtins.str, default_env: builtins.str | None = None
    ) -> Secret | None:
        """A secret from `<key>_env` (an environment variable name), `<key>_file`, or `<key>` in the INI."""
        env_name = self.str(section, f"{key}_env", default_env)
        file_name = self.path(section, f"{key}_file")
        if file_name is not None:
            try:
                value = file_name.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise self.err(section, f"{key}_file", f"cannot read secret file {file_name}: {exc.strerror}") from None
            return Secret(value, f"file {file_name}")
        if env_name and env_name in self.env:
            return Secret(self.env[env_name], f"env {env_name}")
        if self.p.has_option(section, key):  # seed compatibility: secret written in the INI itself
            return Secret(self.p.get(section, key), f"[{section}] {key}")
        return None
