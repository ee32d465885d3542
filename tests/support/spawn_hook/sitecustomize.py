"""Run at start-up by every Python process whose PYTHONPATH starts with this folder: the
workers a test's `narrate run` spawns load tests/support/wrong_words.py's engine."""

from support.wrong_words import install

install()
