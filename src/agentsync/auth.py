"""Secrets and tokens: random, stored only as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from agentsync.protocol import Forbidden, Unauthorized

SHARE_ID_BYTES = 16  # 128 bits of entropy; SPEC asks for at least 96
SECRET_BYTES = 32


def new_share_id() -> str:
    return secrets.token_urlsafe(SHARE_ID_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> bytes:
    # Secrets are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def matches(presented: str | None, stored_hash: bytes | None) -> bool:
    if presented is None or stored_hash is None:
        return False
    return hmac.compare_digest(hash_secret(presented), stored_hash)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_secret(presented: str | None, secret_hash: bytes) -> None:
    """Raise 401 when no credential was given, 403 when it is not the write secret."""
    if presented is None:
        raise Unauthorized("this needs the share's secret: send 'Authorization: Bearer <secret>'")
    if not matches(presented, secret_hash):
        raise Forbidden("the secret does not match this share")
