"""Bearer tokens and roles: HS256/RS256, expiry, audience, algorithm confusion, claims, TTLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import (
    PERMISSIONS,
    AuthError,
    Role,
    TokenKeys,
    bearer_token,
    issue_token,
    parse_ttl,
    verify_token,
)

SECRET = "s" * 40
HOUR = timedelta(hours=1)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def hs_keys(**overrides: object) -> TokenKeys:
    values: dict[str, object] = {
        "algorithm": "HS256",
        "verify_key": SECRET,
        "sign_key": SECRET,
        "audience": "pacs-sync",
        "issuer": "pacs-sync",
    }
    values.update(overrides)
    return TokenKeys(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rsa_pems() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_hs256_round_trip() -> None:
    keys = hs_keys()
    token = issue_token(keys, subject="ana", role=Role.OPERATOR, ttl=HOUR, now=NOW)
    principal = verify_token(keys, token, now=NOW + timedelta(minutes=5))
    assert principal.subject == "ana"
    assert principal.role is Role.OPERATOR
    assert principal.expires_at == NOW + timedelta(hours=1)
    assert principal.token_id


def test_rs256_round_trip_and_public_key_cannot_sign(rsa_pems: tuple[str, str]) -> None:
    private, public = rsa_pems
    issuer = TokenKeys("RS256", public, private, "pacs-sync", "pacs-sync")
    verifier = TokenKeys("RS256", public, None, "pacs-sync", "pacs-sync")
    token = issue_token(issuer, subject="ops", role=Role.ADMIN, ttl=timedelta(minutes=10), now=NOW)
    assert verify_token(verifier, token, now=NOW).role is Role.ADMIN
    with pytest.raises(ValueError, match="signing key"):
        issue_token(verifier, subject="ops", role=Role.ADMIN, ttl=timedelta(minutes=10))


def test_hs256_token_signed_with_the_public_key_is_refused(rsa_pems: tuple[str, str]) -> None:
    """Algorithm confusion: an attacker signs HS256 with the (public) RSA key as the secret."""
    _, public = rsa_pems
    verifier = TokenKeys("RS256", public, None, "pacs-sync", "pacs-sync")
    claims = {"sub": "eve", "role": "admin", "aud": "pacs-sync", "iat": NOW, "exp": NOW + timedelta(hours=1)}
    forged = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="not signed with RS256"):
        verify_token(verifier, forged, now=NOW)


def test_unsigned_token_is_refused() -> None:
    claims = {"sub": "eve", "role": "admin", "aud": "pacs-sync", "iat": NOW, "exp": NOW + timedelta(hours=1)}
    token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        verify_token(hs_keys(), token, now=NOW)


def test_expired_token_is_refused_after_the_leeway() -> None:
    keys = hs_keys(leeway_s=5)
    token = issue_token(keys, subject="ana", role=Role.VIEWER, ttl=timedelta(minutes=1), now=NOW)
    verify_token(keys, token, now=NOW + timedelta(seconds=63))  # within the leeway
    with pytest.raises(AuthError, match="expired"):
        verify_token(keys, token, now=NOW + timedelta(seconds=66))


def test_expired_token_on_the_real_clock() -> None:
    keys = hs_keys()
    token = issue_token(
        keys,
        subject="ana",
        role=Role.VIEWER,
        ttl=timedelta(minutes=1),
        now=datetime.now(tz=UTC) - timedelta(hours=1),
    )
    with pytest.raises(AuthError, match="expired"):
        verify_token(keys, token)


def test_token_not_yet_valid_is_refused() -> None:
    keys = hs_keys()
    token = issue_token(keys, subject="ana", role=Role.VIEWER, ttl=HOUR, now=NOW)
    with pytest.raises(AuthError, match="not valid yet"):
        verify_token(keys, token, now=NOW - timedelta(minutes=5))


def test_other_audience_is_refused() -> None:
    token = issue_token(
        hs_keys(audience="another-api"), subject="a", role=Role.ADMIN, ttl=timedelta(hours=1), now=NOW
    )
    with pytest.raises(AuthError, match="audience"):
        verify_token(hs_keys(), token, now=NOW)


def test_wrong_secret_is_refused() -> None:
    token = issue_token(
        hs_keys(sign_key="x" * 40), subject="a", role=Role.ADMIN, ttl=timedelta(hours=1), now=NOW
    )
    with pytest.raises(AuthError, match="signature"):
        verify_token(hs_keys(), token, now=NOW)


def test_other_issuer_is_refused() -> None:
    token = issue_token(
        hs_keys(issuer="elsewhere"), subject="a", role=Role.ADMIN, ttl=timedelta(hours=1), now=NOW
    )
    with pytest.raises(AuthError, match="issued by"):
        verify_token(hs_keys(), token, now=NOW)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "a", "role": "root"}, "role must be one of"),
        ({"sub": "a"}, "role must be one of"),
        ({"role": "admin"}, "'sub'"),
        ({"sub": "a", "role": "admin", "exp": None}, "'exp'"),
    ],
)
def test_claims_are_required(claims: dict[str, object], message: str) -> None:
    body: dict[str, object] = {"aud": "pacs-sync", "iat": NOW, "exp": NOW + timedelta(hours=1)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    token = jwt.encode(body, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=message):
        verify_token(hs_keys(), token, now=NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x"])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(AuthError):
        verify_token(hs_keys(), garbage, now=NOW)


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR)


def test_permissions_follow_the_issue() -> None:
    viewer = {p for p, r in PERMISSIONS.items() if Role.VIEWER.allows(r)}
    operator = {p for p, r in PERMISSIONS.items() if Role.OPERATOR.allows(r)}
    admin = {p for p, r in PERMISSIONS.items() if Role.ADMIN.allows(r)}
    assert {"view_status", "view_metrics"} <= viewer
    assert "start_sync" not in viewer
    assert "test_connection" not in viewer
    assert {"start_sync", "test_connection"} <= operator
    assert "change_connection" not in operator
    assert admin == set(PERMISSIONS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("7d", 604800), ("2w", 1209600)],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0", "-5m", "8 hours", "400d", "1y"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_issue_refuses_bad_lifetimes_and_subjects() -> None:
    with pytest.raises(ValueError):
        issue_token(hs_keys(), subject="a", role=Role.VIEWER, ttl=timedelta(0))
    with pytest.raises(ValueError):
        issue_token(hs_keys(), subject=" ", role=Role.VIEWER, ttl=timedelta(hours=1))


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(AuthError):
            bearer_token(bad)


def test_unsupported_algorithm() -> None:
    with pytest.raises(ValueError):
        TokenKeys("HS512", SECRET, SECRET, "a", "b")
