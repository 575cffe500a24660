"""``agentsync share create|delete|list``: make a share, remember its secret locally,
delete it later with that secret, and list what this machine created."""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from agentsync.cli_common import (
    EXIT_USAGE,
    CliError,
    ShareBook,
    default_server,
    entry_from_created,
    format_time,
    parse_target,
    print_created,
    state_path,
    unreachable,
)
from agentsync.cli_common import checked as checked_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        help="the local share list (default $AGENTSYNC_HOME/shares.json or "
        "$XDG_DATA_HOME/agentsync/shares.json)",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a share and print its link and secret")
    create.add_argument("--server", default=default_server(), help="[env AGENTSYNC_URL]")
    create.add_argument("--title", default="")
    create.add_argument("--read", choices=("public", "token"), default="public")
    create.add_argument("--ttl", type=int, metavar="SECONDS", help="lifetime (server default)")
    delete = actions.add_parser("delete", help="delete a share (with its stored secret)")
    delete.add_argument("share", metavar="URL|ID")
    delete.add_argument("--secret", help="when this machine did not create it")
    delete.add_argument("--server", default=default_server(), help="for a bare ID")
    actions.add_parser("list", help="the shares this machine created")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    book = ShareBook(state_path(args.state))
    if args.action == "create":
        return create(args, book)
    if args.action == "delete":
        return delete(args, book)
    return list_shares(book)


def create(args: argparse.Namespace, book: ShareBook) -> int:
    server = args.server.rstrip("/")
    body: dict[str, Any] = {"title": args.title, "read": args.read}
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    try:
        created = checked_json(httpx.post(f"{server}/v1/shares", json=body, timeout=30))
    except httpx.TransportError as exc:
        raise unreachable(server, exc) from None
    book.add(entry_from_created(created, server, args.title))
    print_created(created, book.path)
    return 0


def delete(args: argparse.Namespace, book: ShareBook) -> int:
    target = parse_target(args.share, server=args.server)
    entry = book.find(target.session_id)
    secret = args.secret or (entry.secret if entry else None)
    if not secret:
        raise CliError(
            f"no secret for share {target.session_id} in {book.path}; pass --secret",
            EXIT_USAGE,
        )
    server = entry.server if entry and "://" not in args.share else target.server
    try:
        response = httpx.delete(
            f"{server}/v1/shares/{target.session_id}",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
    except httpx.TransportError as exc:
        raise unreachable(server, exc) from None
    if response.status_code in (404, 410):
        # Already gone on the server: forgetting it here is what the user wants.
        print(f"share {target.session_id} was already gone ({response.status_code})")
    else:
        checked_json(response)
        print(f"share {target.session_id} deleted")
    if entry:
        book.remove(target.session_id)
    return 0


def list_shares(book: ShareBook) -> int:
    entries = book.load()
    if not entries:
        print(f"no shares created on this machine (state: {book.path})")
        return 0
    now = int(time.time() * 1000)
    print(f"{'SESSION':24} {'EXPIRES':25} {'TITLE':24} URL")
    for e in sorted(entries, key=lambda e: e.created_at):
        when = format_time(e.expires_at) + (" EXPIRED" if e.expired(now) else "")
        print(f"{e.session_id:24} {when:25} {e.title[:24]:24} {e.share_url}")
    return 0
