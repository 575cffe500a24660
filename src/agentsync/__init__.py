"""agentsync: real-time sync and sharing for AI coding-agent sessions."""

__version__ = "0.1.0"
