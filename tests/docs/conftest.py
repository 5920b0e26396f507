"""After a run of the docs' examples, say how many blocks ran and how many were skipped, and why."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    ran = [
        r
        for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        if "test_page_examples_run" in r.nodeid and r.when == "call"
    ]
    if ran:
        from nnk_docs import count_blocks

        terminalreporter.write_sep("-", "docs examples")
        terminalreporter.write_line(count_blocks().summary())
