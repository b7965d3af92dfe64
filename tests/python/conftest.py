"""A skipped test is not a pass: turn any skip (or an empty run) into a failed session."""
import pytest

_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped:
        print("\nFAILED: skipped tests count as failures here: %s" % ", ".join(_skipped))
        session.exitstatus = 1
    elif exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = 1  # pytest's 5: nothing ran, which is no evidence of anything
