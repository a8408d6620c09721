# SPDX-License-Identifier: GPL-3.0-or-later
"""What every test tier waits with: poll a predicate until it is true or the time is up."""
import time


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    """Returns the first truthy value of predicate(); AssertionError naming `what` after
    `timeout` seconds. Polls every `interval` seconds (tests wait for processes and files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
