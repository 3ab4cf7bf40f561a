from __future__ import annotations

REPORT: list[str] = []  # lines the deploy tests want in the session's summary (the image size)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    for line in REPORT:
        terminalreporter.write_line(line)
