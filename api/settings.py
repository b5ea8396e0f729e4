"""Settings of the ``pacs-sync api`` process (the management API and the dashboard).

Secrets (the JWT secret, the credentials key) are :class:`~pydantic.SecretStr` and never printed;
keys may also come from files (``…_FILE``), so they stay out of the environment of child processes.
Problems that need more than one variable to see (a key given twice, TLS half-configured, plain HTTP
on a public address) are reported by :meth:`ApiSettings.check_serving` / :meth:`token_config`, as a
:class:`~pacs_sync.errors.ConfigurationError` naming the variables.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import sys
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator

from api.auth import TokenKeys
from pacs_sync.errors import ConfigurationError
from pacs_sync.settings import MASK, PacsSettings, describe_validation_error, env_name

MIN_HS256_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key must have at least as many bits as the hash (256)."""
CREDENTIALS_KEY_BYTES = 32
"""AES-256-GCM key length."""

JOB_KINDS = ("full", "incremental", "resync", "verify")
"""Kinds whose command line PACS_API_JOB_COMMANDS may replace (tests run short real commands)."""


def _default_pacs_sync_command() -> tuple[str, ...]:
    # The interpreter running the API runs the CLI too: no dependence on PATH or the venv's scripts.
    return (sys.executable, "-m", "pacs_sync")


class ApiSettings(PacsSettings):
    """Authentication, encryption, TLS, listening address, jobs and the schedule of the API."""

    # --- authentication (JWT bearer tokens) ---
    api_jwt_secret: SecretStr | None = None
    """HS256 signing secret (at least 32 bytes). Either this or PACS_API_JWT_PUBLIC_KEY_FILE."""
    api_jwt_public_key_file: Path | None = None
    """RS256: PEM public key that verifies tokens (the private key stays with whoever issues them)."""
    api_jwt_private_key_file: Path | None = None
    """RS256: PEM private key, needed only by ``pacs-sync token create``."""
    api_jwt_audience: str = Field(default="pacs-sync", min_length=1)
    """The ``aud`` claim every token must carry."""
    api_jwt_issuer: str = Field(default="pacs-sync", min_length=1)
    """The ``iss`` claim ``pacs-sync token create`` writes (checked when present)."""
    api_jwt_leeway_s: int = Field(default=5, ge=0, le=300)
    """Clock skew tolerated on ``exp``/``nbf``/``iat``."""

    # --- encrypted connection settings ---
    api_credentials_key: SecretStr | None = None
    """Base64 of the 32-byte AES-256-GCM key that seals the saved PACS connection settings."""
    api_credentials_key_file: Path | None = None
    """File holding that key (base64 text, or the 32 raw bytes)."""

    # --- serving ---
    api_host: str = Field(default="127.0.0.1", min_length=1)
    """Listen address; anything but loopback requires TLS."""
    api_port: int = Field(default=8080, ge=1, le=65535)
    """Listen port."""
    api_tls_cert_file: Path | None = None
    """PEM certificate (chain): with the key, the API serves HTTPS."""
    api_tls_key_file: Path | None = None
    """PEM private key of the certificate."""

    # --- jobs ---
    api_pacs_sync_command: tuple[str, ...] = Field(default_factory=_default_pacs_sync_command, min_length=1)
    """How jobs invoke the CLI (default: this interpreter, ``-m pacs_sync``)."""
    api_job_commands: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Replace a job kind's command line (JSON ``{"full": ["sh", "-c", "…"]}``); entity flags follow it."""
    api_job_timeout_s: float = Field(default=6 * 3600.0, gt=0, le=7 * 86400)
    """A job step running longer is killed and the job fails with PACS-005."""
    api_job_stale_after_s: float = Field(default=30.0, ge=5, le=3600)
    """A running job whose executor has not reported for this long is marked failed."""
    api_job_output_lines: int = Field(default=40, ge=1, le=1000)
    """Last lines of a job's output kept in its record."""
    api_scheduled_job: Literal["reconcile", "incremental", "full", "none"] = "reconcile"
    """What PACS_SYNC_SCHEDULE starts: a verification with a resync of each failing entity (default)."""

    # --- status ---
    api_stage_metrics: dict[str, str] = Field(
        default_factory=lambda: {
            "producer": "http://127.0.0.1:9101/metrics",
            "processor": "http://127.0.0.1:9102/metrics",
            "sink": "http://127.0.0.1:9103/metrics",
        }
    )
    """Prometheus endpoints of the pipeline stages, scraped for the status (a stage not answering = down)."""
    api_scrape_timeout_s: float = Field(default=1.0, gt=0, le=30)
    """Timeout of one stage scrape."""
    api_test_connection_timeout_s: float = Field(default=10.0, ge=1, le=120)
    """Default time limit of POST /test-connection."""

    @field_validator("api_jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"must be at least {MIN_HS256_SECRET_BYTES} bytes (e.g. openssl rand -base64 48)"
            )
        return value

    @field_validator("api_credentials_key")
    @classmethod
    def _is_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_key(value.get_secret_value().encode())
        return value

    @field_validator("api_job_commands")
    @classmethod
    def _known_kinds(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        unknown = sorted(set(value) - set(JOB_KINDS))
        if unknown:
            raise ValueError(f"unknown job kinds {unknown} (known: {', '.join(JOB_KINDS)})")
        if any(not argv for argv in value.values()):
            raise ValueError("a command line needs at least the program")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """As :meth:`PacsSettings.load`, but no secret's value ever appears in the message."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            fields = [str(e["loc"][0]) if e["loc"] else "?" for e in exc.errors()]
            if not any(_is_secret(f) for f in fields):
                raise ConfigurationError(describe_validation_error(cls, exc)) from exc
            lines = []
            for field, error in zip(fields, exc.errors(), strict=True):
                shown = MASK if _is_secret(field) else error.get("input")
                reason = str(error["msg"]).removeprefix("Value error, ")
                lines.append(f"{env_name(cls, field)}={shown!s}: {reason}")
            raise ConfigurationError("invalid configuration: " + "; ".join(lines)) from None

    # ---- cross-field checks, with the variables named ----

    def jwt_keys(self) -> tuple[str, str, str | None]:
        """(algorithm, verification key, signing key or None) for the configured JWT mode."""
        if self.api_jwt_secret is not None and self.api_jwt_public_key_file is not None:
            raise ConfigurationError(
                "set either PACS_API_JWT_SECRET (HS256) or PACS_API_JWT_PUBLIC_KEY_FILE (RS256), not both"
            )
        if self.api_jwt_secret is not None:
            secret = self.api_jwt_secret.get_secret_value()
            return "HS256", secret, secret
        if self.api_jwt_public_key_file is not None:
            public = _read_text(self.api_jwt_public_key_file, "PACS_API_JWT_PUBLIC_KEY_FILE")
            private = (
                _read_text(self.api_jwt_private_key_file, "PACS_API_JWT_PRIVATE_KEY_FILE")
                if self.api_jwt_private_key_file is not None
                else None
            )
            return "RS256", public, private
        raise ConfigurationError(
            "no token key: set PACS_API_JWT_SECRET (HS256, at least 32 bytes) or "
            "PACS_API_JWT_PUBLIC_KEY_FILE (RS256)"
        )

    def token_keys(self) -> TokenKeys:
        """How tokens are verified (and issued, where a signing key is configured)."""
        algorithm, verify_key, sign_key = self.jwt_keys()
        return TokenKeys(
            algorithm=algorithm,
            verify_key=verify_key,
            sign_key=sign_key,
            audience=self.api_jwt_audience,
            issuer=self.api_jwt_issuer,
            leeway_s=self.api_jwt_leeway_s,
        )

    def credentials_key(self) -> bytes | None:
        """The 32-byte AES key, or None when none is configured."""
        if self.api_credentials_key is not None and self.api_credentials_key_file is not None:
            raise ConfigurationError("set either PACS_API_CREDENTIALS_KEY or PACS_API_CREDENTIALS_KEY_FILE")
        if self.api_credentials_key is not None:
            return decode_key(self.api_credentials_key.get_secret_value().encode())
        if self.api_credentials_key_file is not None:
            try:
                raw = self.api_credentials_key_file.read_bytes()
            except OSError as exc:
                raise ConfigurationError(
                    f"PACS_API_CREDENTIALS_KEY_FILE={self.api_credentials_key_file}: cannot read it ({exc})"
                ) from exc
            try:
                return raw if len(raw) == CREDENTIALS_KEY_BYTES else decode_key(raw.strip())
            except ValueError as exc:
                raise ConfigurationError(f"PACS_API_CREDENTIALS_KEY_FILE: {exc}") from exc
        return None

    def check_serving(self) -> None:
        """TLS both-or-neither, readable files, and plain HTTP only on loopback."""
        cert, key = self.api_tls_cert_file, self.api_tls_key_file
        if (cert is None) != (key is None):
            raise ConfigurationError(
                "set both PACS_API_TLS_CERT_FILE and PACS_API_TLS_KEY_FILE for HTTPS, or neither"
            )
        for path, name in ((cert, "PACS_API_TLS_CERT_FILE"), (key, "PACS_API_TLS_KEY_FILE")):
            if path is not None and not path.is_file():
                raise ConfigurationError(f"{name}={path}: no such file")
        if cert is None and not is_loopback(self.api_host):
            raise ConfigurationError(
                f"PACS_API_HOST={self.api_host}: plain HTTP is served on 127.0.0.1 only; set "
                "PACS_API_TLS_CERT_FILE and PACS_API_TLS_KEY_FILE to listen on another address"
            )
        self.jwt_keys()
        self.credentials_key()

    @property
    def tls(self) -> bool:
        """True when the API serves HTTPS."""
        return self.api_tls_cert_file is not None and self.api_tls_key_file is not None

    def job_command(self, kind: str) -> tuple[str, ...]:
        """The command line of a job kind, before its entity flags."""
        if kind in self.api_job_commands:
            return self.api_job_commands[kind]
        base = self.api_pacs_sync_command
        return {
            "full": (*base, "sync", "--until-caught-up", "--full"),
            "incremental": (*base, "sync", "--until-caught-up"),
            "resync": (*base, "resync"),
            "verify": (*base, "verify", "--json"),
        }[kind]


def decode_key(text: bytes) -> bytes:
    """Base64 (standard or URL-safe) of exactly 32 bytes → the bytes; ValueError otherwise."""
    try:
        raw = base64.b64decode(text, altchars=b"-_" if b"-" in text or b"_" in text else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be base64 of a 32-byte key (e.g. openssl rand -base64 32)") from exc
    if len(raw) != CREDENTIALS_KEY_BYTES:
        raise ValueError(f"must decode to {CREDENTIALS_KEY_BYTES} bytes, not {len(raw)}")
    return raw


def _is_secret(field: str) -> bool:
    return any(word in field for word in ("secret", "key", "password", "dsn"))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{name}={path}: cannot read it ({exc})") from exc
