"""The examples of the README and of every docs/ page run, and print what the page shows (``nnk_docs``: the convention).

One test per page: a failure names the page and the block's line. The slow tier (the pages together take minutes).
"""

from __future__ import annotations

import pytest

from nnk_docs import REPO, doc_pages, run_page

PAGES = doc_pages()


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_examples_run(page, record_property):
    run = run_page(page)
    record_property("blocks_run", len(run.ran))
    record_property("blocks_skipped", [f"{b.where}: {b.skip}" for b in run.skipped])
    if run.failure:
        pytest.fail(run.failure, pytrace=False)
