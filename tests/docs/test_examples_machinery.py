"""The docs-examples runner itself: blocks, directives, shown output, failures named by page and line."""

from __future__ import annotations

import textwrap

import pytest

from nnk_docs import count_blocks, nnk_invocations, page_commands, parse_blocks, run_page, shown_output_mismatch

PAGE = textwrap.dedent(
    """\
    # A page

    ```bash
    nnk info sample_data/fashion-mnist.h5 > info.txt
    echo made > made.txt
    ```

    <!-- skip: needs a GPU -->
    ```bash
    nnk classify feats.h5 --device cuda
    ```

    <!-- exit: 2 -->
    ```bash
    nnk classify sample_data/fashion-mnist.h5 --k 0
    ```

    ```python
    from pathlib import Path
    print(Path("made.txt").read_text().strip(), "from python")
    ```

    It prints:

    ```text
    made from python
    ```
    """
)


def _page(tmp_path, text):
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_blocks_and_directives_are_read(tmp_path):
    blocks = parse_blocks(_page(tmp_path, PAGE))
    assert [(b.lang, b.line, b.skip, b.exit_code) for b in blocks] == [
        ("bash", 3, None, 0),
        ("bash", 9, "needs a GPU", 0),
        ("bash", 14, None, 2),
        ("python", 18, None, 0),
        ("text", 25, None, 0),
    ]
    assert blocks[3].output == ["made from python"]
    assert blocks[0].output is None


def test_a_page_runs_in_order_in_one_folder_and_counts_its_skips(tmp_path):
    page = _page(tmp_path, PAGE)
    run = run_page(page)
    assert run.failure is None
    assert len(run.ran) == 3 and [b.skip for b in run.skipped] == ["needs a GPU"]


def test_count_blocks_counts_run_and_skipped(tmp_path, monkeypatch):
    import nnk_docs

    monkeypatch.setattr(nnk_docs, "REPO", tmp_path)
    counts = count_blocks([_page(tmp_path, PAGE)])
    assert (counts.run, counts.skipped) == (3, 1)
    assert counts.reasons == {"needs a GPU": 1}
    assert "3 blocks run, 1 skipped" in counts.summary() and "needs a GPU" in counts.summary()


@pytest.mark.parametrize(
    "change, says",
    [
        (("nnk info sample_data/fashion-mnist.h5 >", "nnk info missing.h5 >"), "page.md:3: the bash block exited 1"),
        (("<!-- exit: 2 -->", "<!-- exit: 1 -->"), "page.md:14: the bash block exited 2, expected 1"),
        (("made from python", "made from bash"), "page.md:18: the output shown at line 25 has 'made from bash'"),
        (('print(Path("made.txt")', 'print(Path("gone.txt")'), "page.md:18: the python block exited 1"),
    ],
)
def test_a_failing_block_is_named_by_its_page_and_line(tmp_path, change, says):
    run = run_page(_page(tmp_path, PAGE.replace(*change)))
    assert run.failure is not None and says in run.failure


def test_a_text_block_marked_unchecked_is_not_output(tmp_path):
    page = PAGE.replace("It prints:\n\n```text", "It prints:\n\n<!-- output: unchecked -->\n```text")
    blocks = parse_blocks(_page(tmp_path, page.replace("made from python", "anything")))
    assert blocks[3].output is None
    assert run_page(tmp_path / "page.md").failure is None


def test_a_text_block_after_prose_is_not_output(tmp_path):
    page = PAGE.replace("It prints:", "Then something else happens, and here is a file.")
    assert parse_blocks(_page(tmp_path, page))[3].output is None


def test_shown_output_matches_words_in_order_with_ellipses():
    printed = "method  k   top-1\nnnk     50  85.65  [84.1, 87.1]\n"
    assert shown_output_mismatch(["nnk 50 85.65"], printed) is None
    assert shown_output_mismatch(["nnk ... [84.1, 87.1]", "..."], printed) is None
    assert shown_output_mismatch(["nnk 50 85.66"], printed) == "nnk 50 85.66"
    assert shown_output_mismatch(["85.65 ... nnk"], printed) == "85.65 ... nnk"


def test_nnk_command_lines_are_found_in_shell_lines():
    assert nnk_invocations("nnk -v classify f.h5 --k 5 | tee out.txt") == [["classify", "f.h5", "--k", "5"]]
    assert nnk_invocations("srun nnk sweep f.h5 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT") == [
        ["sweep", "f.h5", "--shard", "0/4"]
    ]
    assert nnk_invocations('nnk info "$(python -c "print(1)")" && nnk history h.jsonl  # note') == [
        ["info", "X"],
        ["history", "h.jsonl"],
    ]
    assert nnk_invocations("pip install nnkcli") == []


def test_page_commands_cover_bash_cron_and_prompts(tmp_path):
    text = PAGE + "\n```text\n0 2 * * * cd /srv && nnk evaluate --history h.jsonl x.h5\n```\n"
    text += "\n```console\n$ nnk info a.h5\nprinted\n```\n"
    commands = page_commands(_page(tmp_path, text))
    assert [(line, argv[0]) for line, argv in commands] == [
        (4, "info"),
        (10, "classify"),  # line 15's `--k 0` is marked exit 2: a usage error shown on purpose, not parsed
        (30, "evaluate"),
        (34, "info"),
    ]
