"""API tokens in PostgreSQL: made random, shown once, kept only as a digest.

A token is `scns_` and 43 URL-safe characters (256 random bits). Its SHA-256 digest is what the
table holds and what a lookup uses; a token that random needs no slow hash (there is nothing to
guess from the digest that is easier than guessing the token). Each has a short public id (what
`scns token list` shows and `scns token revoke` takes), a user name, a role (`user`/`admin`), an
optional expiry and, once revoked, its revocation time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from shared.db.queries import q

Executor: TypeAlias = "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[Any]"

PREFIX = "scns_"
ROLES = ("user", "admin")
USER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_LIFETIME_S = 10 * 365 * 86_400


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).digest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before any lookup: what is not one of ours is refused at once."""
    return value.startswith(PREFIX) and 20 <= len(value) <= 200 and value.isascii()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRow:
    id: str
    user: str
    role: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    expired: bool

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> TokenRow:
        return cls(id=r["id"], user=r["user_name"], role=r["role"], created_at=r["created_at"],
                   created_by=r["created_by"], expires_at=r["expires_at"],
                   revoked_at=r["revoked_at"], expired=r["expired"])

    @property
    def problem(self) -> str | None:
        """Why it no longer works (None: it does)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expired:
            return "expired"
        return None


class TokenStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def create(self, user: str, role: str = "user", *, expires_in_s: int | None = None,
                     created_by: str | None = None) -> tuple[TokenRow, str]:
        """A new token: its row and the token itself (shown once; only its digest is kept)."""
        if not USER_NAME.match(user):
            raise ValueError(f"user name {user!r}: use 1 to 64 letters, digits, '.', '_', '-'")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: use user or admin")
        token = new_token()
        for _ in range(5):  # a 48-bit id collides about never; if it does, draw again
            try:
                row = await self.db.fetchrow(q("insert_token"), "t" + secrets.token_hex(6),
                                             user, role, expires_in_s, digest(token),
                                             created_by)
            except asyncpg.UniqueViolationError:
                continue
            assert row is not None
            return TokenRow.from_row(row), token
        raise RuntimeError("could not draw a unique token id")

    async def find(self, token: str) -> TokenRow | None:
        """The row of a token, revoked or expired ones included (None: not a token of ours)."""
        if not looks_like_token(token):
            return None
        row = await self.db.fetchrow(q("find_token"), digest(token))
        return TokenRow.from_row(row) if row else None

    async def list(self, *, user: str | None = None, after_id: str | None = None,
                   limit: int = 100) -> list[TokenRow]:
        """Newest first; `after_id`: the last id of the previous page."""
        rows = await self.db.fetch(q("list_tokens"), user, limit, after_id)
        return [TokenRow.from_row(r) for r in rows]

    async def revoke(self, token_id: str) -> TokenRow | None:
        row = await self.db.fetchrow(q("revoke_token"), token_id)
        return TokenRow.from_row(row) if row else None
