"""Bearer tokens and roles (pure: no I/O, the clock is a parameter).

Tokens are JWTs signed HS256 with a shared secret or RS256 with a private key (verified with the
public key). Each carries ``sub`` (who), ``role``, ``aud`` (must equal the configured audience),
``iss``, ``iat``, ``nbf``, ``exp`` and a ``jti``. Verification accepts only the configured algorithm
(so an RS256 public key can never be used as an HS256 secret) and requires ``exp``, ``aud``, ``sub``
and a known ``role``.

Roles are ordered: viewer (status, metrics) < operator (+ start syncs, test connections) < admin
(+ change the connection settings); a higher role may do everything a lower one may.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt

MAX_TTL = timedelta(days=366)
"""Longest lifetime ``pacs-sync token create`` issues."""


class Role(StrEnum):
    """What a token's holder may do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the order viewer < operator < admin."""
        return _RANKS[self]

    def allows(self, required: Role) -> bool:
        """True when this role may do what ``required`` may."""
        return self.rank >= required.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

PERMISSIONS: dict[str, Role] = {
    "view_status": Role.VIEWER,
    "view_metrics": Role.VIEWER,
    "view_jobs": Role.VIEWER,
    "test_connection": Role.OPERATOR,
    "start_sync": Role.OPERATOR,
    "view_connection": Role.OPERATOR,
    "view_audit": Role.OPERATOR,
    "change_connection": Role.ADMIN,
}
"""Each action of the API and the least role that may do it (the dashboard shows buttons by these)."""


class AuthError(Exception):
    """A token is missing, malformed, expired, for another audience, or badly signed (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        """``reason`` is safe to show to the caller: it never contains the token."""
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenKeys:
    """How tokens are signed and verified."""

    algorithm: str
    """HS256 or RS256."""
    verify_key: str
    """The HS256 secret or the RS256 public key (PEM)."""
    sign_key: str | None
    """The HS256 secret or the RS256 private key (PEM); None where only verification happens."""
    audience: str
    issuer: str
    leeway_s: int = 5

    def __post_init__(self) -> None:
        """Only the two algorithms the issue names."""
        if self.algorithm not in {"HS256", "RS256"}:
            raise ValueError(f"unsupported algorithm {self.algorithm!r} (HS256 or RS256)")


@dataclass(frozen=True)
class Principal:
    """Who made a request, as the verified token says."""

    subject: str
    role: Role
    expires_at: datetime
    token_id: str | None = None

    def allows(self, required: Role) -> bool:
        """True when the principal's role covers ``required``."""
        return self.role.allows(required)


def issue_token(
    keys: TokenKeys, *, subject: str, role: Role, ttl: timedelta, now: datetime | None = None
) -> str:
    """Sign a token for ``subject`` with ``role``, valid for ``ttl`` from ``now``."""
    if keys.sign_key is None:
        raise ValueError("no signing key: RS256 needs PACS_API_JWT_PRIVATE_KEY_FILE to issue tokens")
    if not subject.strip():
        raise ValueError("the subject (who the token is for) must not be empty")
    if ttl <= timedelta(0) or ttl > MAX_TTL:
        raise ValueError(f"the lifetime must be positive and at most {MAX_TTL.days} days")
    issued = (now or datetime.now(tz=UTC)).replace(microsecond=0)
    claims: dict[str, Any] = {
        "sub": subject,
        "role": str(role),
        "aud": keys.audience,
        "iss": keys.issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, keys.sign_key, algorithm=keys.algorithm)


def verify_token(keys: TokenKeys, token: str, *, now: datetime | None = None) -> Principal:
    """Check the signature, algorithm, expiry, audience and claims; return the principal or raise.

    Times (``exp``, ``nbf``) are checked here against ``now`` (default: the clock), with the leeway.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys.verify_key,
            algorithms=[keys.algorithm],
            audience=keys.audience,
            options={
                "require": ["exp", "aud", "sub", "iat"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise AuthError(f"the token is not for this API (audience must be {keys.audience!r})") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"the token is not signed with {keys.algorithm}") from None
    except jwt.InvalidSignatureError:
        raise AuthError("the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"the token is malformed or invalid ({type(exc).__name__})") from None
    return _principal(claims, keys, (now or datetime.now(tz=UTC)).timestamp())


def _principal(claims: dict[str, Any], keys: TokenKeys, now_ts: float) -> Principal:
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("the token's 'exp' claim is not a time")
    if now_ts >= exp + keys.leeway_s:
        raise AuthError("the token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now_ts < nbf - keys.leeway_s:
        raise AuthError("the token is not valid yet")
    issuer = claims.get("iss")
    if issuer is not None and issuer != keys.issuer:
        raise AuthError(f"the token was issued by {issuer!r}, not {keys.issuer!r}")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError("the token's subject is empty")
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise AuthError(f"the token's role must be one of {', '.join(r.value for r in Role)}") from None
    jti = claims.get("jti")
    return Principal(
        subject=subject,
        role=role,
        expires_at=datetime.fromtimestamp(exp, tz=UTC),
        token_id=jti if isinstance(jti, str) else None,
    )


_TTL = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``30m``, ``8h``, ``7d``, ``2w`` or plain seconds → a timedelta (ValueError otherwise)."""
    match = _TTL.match(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a lifetime: use e.g. 30m, 8h, 7d or seconds")
    ttl = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if ttl <= timedelta(0) or ttl > MAX_TTL:
        raise ValueError(f"{text!r}: the lifetime must be positive and at most {MAX_TTL.days} days")
    return ttl


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or AuthError."""
    if not authorization:
        raise AuthError("no bearer token: send Authorization: Bearer <token> (pacs-sync token create)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token.strip()
