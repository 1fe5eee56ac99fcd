"""The command's one-line errors: jsonargparse's nested messages cut down to ``--flag: reason``, our own
ArgumentError's argument put under its flag, and the exit."""

from __future__ import annotations

import pytest

from lightning_clr.cli._errors import debug, fail, join_flag, shorten_parse_error


def test_the_nested_keys_make_the_full_flag_and_the_innermost_reason_the_message() -> None:
    message = (
        'Parser key "clr":\n'
        '  Parser key "range_test":\n'
        '    Parser key "rule":\n'
        "      Expected a typing.Literal['smith', 'valley']. Got value: fastest\n"
        '  Parser key "other_alternative":\n'
        "    something else\n"
    )
    assert shorten_parse_error(message) == "--clr.range_test.rule: expected one of 'smith', 'valley', got 'fastest'"


def test_a_subcommands_name_is_dropped_from_the_flag_and_the_unrecognized_arguments() -> None:
    assert shorten_parse_error('Parser key "fit.clr.mode":\n  Expected a int. Got value: x', ("fit",)).startswith(
        "--clr.mode: "
    )
    assert shorten_parse_error("error: unrecognized arguments: fit --bogus 1", ("fit",)) == (
        "error: unrecognized arguments: --bogus 1"
    )
    assert shorten_parse_error("\n\n") == "invalid arguments"


@pytest.mark.parametrize(
    "prefix, argument, flag",
    [("--clr", "max_lr", "--clr.max_lr"), ("--clr.range_test", "range_test.num_steps", "--clr.range_test.num_steps"),
     ("", "n_trials", "--n_trials"), ("--search", "search.modes", "--search.modes")],
)
def test_join_flag_does_not_repeat_the_prefix(prefix: str, argument: str, flag: str) -> None:
    assert join_flag(prefix, argument) == flag


def test_fail_prints_one_line_and_exits_with_status_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        fail("--clr.max_lr: must be > 0, got -1")
    assert info.value.code == 2
    assert capsys.readouterr().err == "lightning-clr: error: --clr.max_lr: must be > 0, got -1\n"


def test_debug_is_on_only_for_a_true_value(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("", False), ("0", False), ("false", False), ("no", False), ("1", True), ("yes", True)]:
        monkeypatch.setenv("JSONARGPARSE_DEBUG", value)
        assert debug() is expected
    monkeypatch.delenv("JSONARGPARSE_DEBUG")
    assert debug() is False
