"""Harness for driving the real opencode share client against a loopback share server."""
