"""`condnet.checks.check_value`: the one check behind the config's keys and the specs' fields."""

import pytest

from condnet.checks import check_value
from condnet.errors import CondnetError


def test_values_are_coerced_or_refused_in_one_line_naming_the_setting():
    assert check_value("a", 3, float, {"gt": 0}) == 3.0
    assert check_value("a", [1, 2], list, {"length": 2}) == [1.0, 2.0]
    assert check_value("a", None, int | None, {}) is None
    cases = [
        (0, int, {"min": 1}, r"a: expected an integer \(>= 1\), got 0"),
        (True, int, {}, "a: expected an integer, got True"),
        ("x", str, {"choices": ("y", "z")}, "a: expected one of y, z; got 'x'"),
        ([1], list, {"length": 2}, "a: expected a list of 2 numbers, got"),
        (None, int, {"min": 1}, r"a: a value is required \(an integer \(>= 1\)\)"),
    ]
    for value, kind, rules, message in cases:
        with pytest.raises(CondnetError, match=message):
            check_value("a", value, kind, rules)
