"""esctl's table layouts, and the vocabulary the CLI shares with the services."""

from __future__ import annotations

import io

from rich.text import Text

from esctl.output import Column, plain_table, print_table
from esctl.workflows import WORKFLOW_STATUSES
from workflow_service.model import ACTIVE, COMPENSATING, TERMINAL

LONG = "publication:a-post-whose-identifier-is-longer-than-forty-characters:v1"


def test_plain_columns_align_under_an_upper_case_header_and_keep_every_value_whole() -> None:
    """Plain layout: one header row of upper-case, dash-joined names; every value whole; columns
    start at the same position on every line; an empty value is `-`."""
    text = plain_table(["workflow", "next timer", "failures"], [(LONG, None, 0), ("w2", "t", 12)])
    lines = text.splitlines()
    assert lines[0].split() == ["WORKFLOW", "NEXT-TIMER", "FAILURES"]
    assert lines[1].split() == [LONG, "-", "0"]
    assert lines[2].split() == ["w2", "t", "12"]
    column = lines[0].index("NEXT-TIMER")
    assert [line[column - 1 : column + 1] for line in lines] == [" N", " -", " t"]


def test_a_value_with_a_newline_stays_on_its_row() -> None:
    """A cell holding a line break is printed on its row (one line per row, for grep)."""
    assert plain_table(["detail"], [("a\nb",)]).splitlines() == ["DETAIL", "a b"]


def test_on_a_narrow_terminal_ids_are_never_cut() -> None:
    """On a terminal narrower than the table, every id is still printed whole (the plain
    layout instead of a truncated rich table); a wide terminal gets the rich table, ids whole."""
    for width, boxed in ((60, False), (200, True)):
        out = io.StringIO()
        print_table(
            ["workflow", "status", Column("detail", wrap=True)],
            [(LONG, "active", '{"reason": "a long free text that may wrap"}')],
            file=out,
            terminal=True,
            width=width,
        )
        assert LONG in out.getvalue()
        assert ("┃" in out.getvalue()) is boxed


def test_a_styled_value_is_coloured_on_a_terminal_and_plain_in_a_pipe() -> None:
    """A cell given as rich Text (the trend of `esctl lag --watch`) keeps its colour in the
    terminal's table and is its bare text in the plain columns (no escape codes)."""
    cell = Text("↑ falling behind", style="bold red")
    on_terminal, in_pipe = io.StringIO(), io.StringIO()
    print_table(["group", "trend"], [("g", cell)], file=on_terminal, terminal=True, width=80)
    print_table(["group", "trend"], [("g", cell)], file=in_pipe, terminal=False)
    assert "\x1b[1;31m↑ falling behind" in on_terminal.getvalue()
    assert in_pipe.getvalue().splitlines() == ["GROUP   TREND", "g       ↑ falling behind"]


def test_the_cli_knows_every_workflow_status_of_the_workflow_service() -> None:
    """`esctl workflows list --status` checks against the statuses the service really uses."""
    assert set(WORKFLOW_STATUSES) == {ACTIVE, COMPENSATING, *TERMINAL}
