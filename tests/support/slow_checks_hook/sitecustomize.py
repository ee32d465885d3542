"""Run at start-up by every Python process whose PYTHONPATH starts with this folder: each
quality check of a test's `narrate run` takes SLOW_CHECK_S longer, as on a host whose cores are
busy, so that the engine's takes queue up for their check."""

import time

import narrate.gate

SLOW_CHECK_S = 1.0
_real_check = narrate.gate.check


def _slow_check(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the check's own signature
    time.sleep(SLOW_CHECK_S)
    return _real_check(*args, **kwargs)


narrate.gate.check = _slow_check
