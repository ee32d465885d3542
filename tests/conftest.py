"""Shared pytest set-up: fixtures from tests/support are registered here."""

pytest_plugins = [
    "support.audioseal_models",
    "support.gcs",
    "support.rtdb_server",
    "support.tiny_model",
]
