"""narrate: offline batch narration of book texts with Sesame CSM-1B."""

__version__ = "0.1.0"
