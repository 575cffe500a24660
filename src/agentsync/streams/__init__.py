"""Durable Streams (github.com/durable-streams/durable-streams) served by agentsync.

``rules`` holds the protocol's pure rules and decisions (``forks`` those of forks: what a
fork inherits and where its reads come from), ``store`` the storage interface
(``sqlite`` implements it on the node's SQLite store, same file, same writer), and
``manager`` this node's live state: the metadata cache, waiting readers, access times.
The HTTP edge is :mod:`agentsync.server.streams`.
"""
