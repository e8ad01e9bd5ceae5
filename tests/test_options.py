"""Run options declared once (`tokentrim_core.options`): what a declaration accepts, in the same words for a
config file, a command line and a form, worked out by hand."""

import math
from dataclasses import dataclass

import pytest

from tokentrim_core.options import Option, check_options, option, option_of, options


@dataclass(frozen=True)
class Settings:
    fraction: float = option(
        0.5, "a fraction", low=0.0, high=1.0, low_open=True, high_open=True, flag="--fraction"
    )
    count: int = option(2, "a count", low=1, label="Count")
    mode: str = option("a", "a mode", choices=("a", "b"))
    on: bool = option(True, "a switch")
    maybe: bool | None = option(None, "a switch or the default")
    plain: int = 7  # not an option

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class More(Settings):
    count: int = option_of(Settings, "count", 5)


def test_declarations_are_read_back_with_their_types_and_defaults():
    found = options(Settings)
    assert list(found) == ["fraction", "count", "mode", "on", "maybe"]
    assert [(kind, default) for _, kind, default in found.values()] == [
        (float, 0.5), (int, 2), (str, "a"), (bool, True), (bool, None)
    ]  # fmt: skip
    assert found["fraction"][0].flag == "--fraction" and found["count"][0].label == "Count"
    assert options(More)["count"][2] == 5 and options(More)["count"][0] == found["count"][0]


@pytest.mark.parametrize(
    "opt, kind, words",
    [
        (Option("", 0.0, 1.0, True, True), float, "a finite number > 0 and < 1"),
        (Option("", 1), int, "an int >= 1"),
        (Option("", 0, 2**63 - 1), int, "an int >= 0 and <= 9223372036854775807"),
        (Option("", high=3.5), float, "a finite number <= 3.5"),
        (Option("", choices=("x", "y")), str, "one of ('x', 'y')"),
        (Option(""), bool, "a bool"),
    ],
)
def test_expected_values_in_words(opt, kind, words):
    assert opt.expected(kind) == words


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("fraction", 0.0, "fraction must be a finite number > 0 and < 1, got 0.0"),
        ("fraction", 1, "fraction must be a finite number > 0 and < 1, got 1"),
        ("fraction", math.nan, "fraction must be a finite number > 0 and < 1, got nan"),
        ("fraction", True, "fraction must be a finite number > 0 and < 1, got True"),
        ("count", 0, "count must be an int >= 1, got 0"),
        ("count", 1.0, "count must be an int >= 1, got 1.0"),  # a config value is not rounded
        ("mode", "c", "mode must be one of ('a', 'b'), got 'c'"),
        ("on", 1, "on must be a bool, got 1"),
        ("maybe", "yes", "maybe must be a bool, got 'yes'"),
    ],
)
def test_a_config_value_outside_its_declaration_names_the_field(field, value, message):
    with pytest.raises(ValueError) as err:
        Settings(**{field: value})
    assert str(err.value) == message


def test_the_boundaries_and_none_where_allowed():
    assert Settings(fraction=1e-9, count=1, maybe=None, plain=-3).count == 1
    assert Settings(maybe=False).maybe is False


@pytest.mark.parametrize(
    "field, value, parsed",
    [
        ("count", "3", 3),
        ("count", 3.0, 3),
        ("count", " 4 ", 4),
        ("fraction", "0.25", 0.25),
    ],
)
def test_typed_and_form_values_are_parsed_without_rounding(field, value, parsed):
    opt, kind, _ = options(Settings)[field]
    got = opt.parse(field, value, kind)
    assert got == parsed and type(got) is kind


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("count", "3.5", "count must be an int >= 1, got 3.5"),
        ("count", 3.5, "count must be an int >= 1, got 3.5"),
        ("count", "x", "count must be an int >= 1, got x"),
        ("count", "", "count must be an int >= 1, got ''"),
        ("fraction", "inf", "fraction must be a finite number > 0 and < 1, got inf"),
        ("mode", "c", "mode must be one of ('a', 'b'), got c"),
    ],
)
def test_a_typed_value_outside_its_declaration_is_one_message(field, value, message):
    opt, kind, _ = options(Settings)[field]
    with pytest.raises(ValueError) as err:
        opt.parse(field, value, kind)
    assert str(err.value) == message
