"""`scns token create|list|revoke`: API tokens (admin).

Through the gateway with the caller's (admin) token; `create --direct` writes straight to the
database at SCNS_DATABASE_URL instead, for the first admin token of a cluster (`scns up` makes
its own).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import click
from rich.table import Table

from services.cli.common import client, emit_json, err, out

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_lifetime(text: str) -> int:
    """`3600`, `90s`, `30m`, `12h`, `90d` or `2w` -> seconds."""
    m = _DURATION.match(text.strip().lower())
    if not m or int(m[1]) == 0:
        raise ValueError(f"{text!r}: use a positive number of seconds, or N with s, m, h, d or "
                         "w (e.g. 90d)")
    return int(m[1]) * _UNIT_S[m[2]]


class Lifetime(click.ParamType[int]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_lifetime(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.group("token")
def token() -> None:
    """API tokens: create one (shown once), list them, revoke one (admin)."""


@token.command("create", epilog="The token is printed once; only its digest is stored. Give "
                "it to its user as SCNS_TOKEN.")
@click.argument("user")
@click.option("--admin", is_flag=True, help="an admin token (every job, workers, tokens)")
@click.option("--expires-in", "expires_in", type=Lifetime(), metavar="DURATION",
              help="lifetime: seconds, or 30m, 12h, 90d, 2w [never expires]")
@click.option("--direct", is_flag=True,
              help="write to the database at SCNS_DATABASE_URL, not through the gateway "
                   "(the first admin token of a cluster)")
@click.option("--json", "as_json", is_flag=True, help="print the token's record as JSON")
def create(user: str, admin: bool, expires_in: int | None, direct: bool, as_json: bool) -> None:
    """Make a token for USER."""
    role = "admin" if admin else "user"
    if direct:
        made = asyncio.run(_create_direct(user, role, expires_in))
    else:
        made = client().call("POST", "/api/v1/tokens",
                             {"user": user, "role": role, "expires_in_s": expires_in})
    if as_json:
        emit_json(made)
        return
    click.echo(made["token"])
    expiry = f", expires {made['expires_at']}" if made.get("expires_at") else ""
    err.print(f"token {made['id']} for {made['user']} ({made['role']}{expiry}); it is shown "
              "only this once")


async def _create_direct(user: str, role: str, expires_in: int | None) -> dict[str, Any]:
    import getpass

    from services.gateway.tokens import token_json
    from shared.db.pool import connect
    from shared.db.tokens import TokenStore
    from shared.settings import Settings

    conn = await connect(Settings.from_env().database_url, application_name="scns-token")
    try:
        row, secret = await TokenStore(conn).create(user, role, expires_in_s=expires_in,
                                                    created_by=f"{getpass.getuser()} (direct)")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    finally:
        await conn.close()
    return {**token_json(row), "token": secret}


@token.command("list")
@click.option("-u", "--user", help="only this user's tokens")
@click.option("--json", "as_json", is_flag=True)
def list_(user: str | None, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    page: dict[str, Any] = {"items": [t for items, _ in client().pages("/api/v1/tokens",
                                                                         {"user": user})
                                      for t in items], "next_cursor": None}
    if as_json:
        emit_json(page)
        return
    t = Table(box=None, header_style="bold")
    for col in ("ID", "USER", "ROLE", "CREATED", "EXPIRES", "STATE"):
        t.add_column(col)
    for tok in page["items"]:
        st = ("revoked" if tok["revoked_at"] else "active" if tok["active"] else "expired")
        t.add_row(tok["id"], tok["user"], tok["role"], tok["created_at"] or "",
                  tok["expires_at"] or "never", st)
    out.print(t)


@token.command("revoke")
@click.argument("token_ids", nargs=-1, required=True, metavar="ID...")
def revoke(token_ids: tuple[str, ...]) -> None:
    """Revoke tokens by ID (every gateway refuses them within 2 s)."""
    c = client()
    for tid in token_ids:
        made = c.call("DELETE", f"/api/v1/tokens/{tid}")
        click.echo(f"token {made['id']} ({made['user']}) revoked")
