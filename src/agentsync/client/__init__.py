"""The agentsync SDK: stream an agent session into a share, lose nothing.

>>> share = Share.create("http://127.0.0.1:8787", title="fix the flaky test")
>>> mid = share.add_message("assistant")
>>> share.stream_text(mid, "Looking at the test…")
>>> share.close()   # flushes: everything committed and acknowledged

``AsyncShare`` is the asyncio form. Terminal failures raise the protocol's errors:
``ShareGone`` (deleted or expired), ``Forbidden`` (wrong secret), ``NotFound``.
"""

from agentsync.client.connection import ReceivedEvent, Rejected, Snapshot
from agentsync.client.outbox import Outbox, OutboxRow, default_path
from agentsync.client.share import AsyncShare, parse_share_url
from agentsync.client.sync import Share
from agentsync.protocol import AgentsyncError, Forbidden, NotFound, Unauthorized
from agentsync.protocol import Gone as ShareGone

__all__ = [
    "AgentsyncError",
    "AsyncShare",
    "Forbidden",
    "NotFound",
    "Outbox",
    "OutboxRow",
    "ReceivedEvent",
    "Rejected",
    "Share",
    "ShareGone",
    "Snapshot",
    "Unauthorized",
    "default_path",
    "parse_share_url",
]
