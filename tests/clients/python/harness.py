"""What the Python client checks share: a check that prints and counts, a bounded poll, and the
summary line with the exit code."""

import time

_failures = 0


def check(condition, what):
    global _failures
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        _failures += 1


def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def finish(client):
    """Prints the summary for `client` and returns the exit code: 1 if any check failed."""
    if _failures == 0:
        print(f"{client}: all checks passed")
        return 0
    print(f"{client}: {_failures} check(s) failed")
    return 1
