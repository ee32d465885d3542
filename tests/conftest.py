"""Shared pytest set-up: fixtures from tests/support are registered here."""

pytest_plugins = ["support.gcs", "support.rtdb_server", "support.tiny_model"]
