"""A contract rule, defined once and read four ways: Python value, pandas Series, Arrow, Spark.

A ``Rule`` names a field, one of a few ``TESTS`` with its argument (for example
``below 0``) and the one reason string a validator reports when a value breaks it.
The contract's rules themselves are ``schemas.transaction.RULES``; this module only
says what each test means in each engine:

- ``Rule.broken(value)``: the producer-side check on one parsed Python value;
- ``Rule.broken_series(series)``: the adapters' vectorised check (nulls never break
  a rule here: the caller decides what a null means);
- ``Rule.broken_column(column)``: the Spark streaming validator's check, a boolean
  ``Column`` (null when the value is null);
- ``Rule.broken_arrow(array)``: the stream's driver-side check on a typed Arrow array,
  a boolean array (null where the value is null), as ``broken_column``.

Every test is spelled with operations that mean the same in all three (``strip``
with an explicit character set rather than "whitespace", which differs between
Python and Java), and tests/spark/test_parse.py probes each test at its
boundaries in Python and in Spark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The characters a "blank" value consists of (ASCII whitespace, the same set for
#: Python's ``str.strip``, pandas ``.str.strip`` and Spark's ``btrim``).
BLANK_CHARS = " \t\n\r\f\v"

#: test -> what its argument is. A value *breaks* the rule when the test holds.
TESTS = {
    "blank": "characters; the value consists only of them (or is empty)",
    "longer_than": "a length; the string has more characters",
    "outside": "(low, high); the number is below low or above high",
    "not_finite": "None; the number is NaN or infinite",
    "equals": "a value; the value equals it",
    "below": "a number; the value is smaller",
    "not_in": "a tuple; the value is none of them",
}


@dataclass(frozen=True)
class Rule:
    """One named rule on one field: broken when ``test`` (with ``arg``) holds for the value."""

    field: str
    name: str
    test: str
    arg: Any
    reason: str  # what follows "<field>: " in the reported reason

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"rule {self.field}.{self.name}: unknown test {self.test!r}")

    @property
    def message(self) -> str:
        """The full reason a validator reports: ``"<field>: <reason>"``."""
        return f"{self.field}: {self.reason}"

    def broken(self, value: Any) -> bool:
        """Whether one parsed, non-null Python value breaks the rule."""
        test, arg = self.test, self.arg
        if test == "blank":
            return value.strip(arg) == ""
        if test == "longer_than":
            return len(value) > arg
        if test == "outside":
            return not arg[0] <= value <= arg[1]
        if test == "not_finite":
            return not math.isfinite(value)
        if test == "equals":
            return value == arg
        if test == "below":
            return value < arg
        if test == "not_in":
            return value not in arg
        raise AssertionError(test)

    def broken_series(self, value: Any) -> Any:
        """A boolean pandas Series: which values break the rule (null values never do)."""
        test, arg = self.test, self.arg
        if test == "blank":
            broken = value.str.strip(arg) == ""
        elif test == "longer_than":
            broken = value.str.len() > arg
        elif test == "outside":
            broken = (value < arg[0]) | (value > arg[1])
        elif test == "not_finite":
            broken = value.abs() == math.inf  # NaN is null to pandas: left to the caller
        elif test == "equals":
            broken = value == arg
        elif test == "below":
            broken = value < arg
        elif test == "not_in":
            broken = ~value.isin(list(arg))
        else:
            raise AssertionError(test)
        return broken.fillna(False).astype(bool) & value.notna()

    def broken_column(self, value: Any) -> Any:
        """A boolean Spark Column: whether the value breaks the rule (null for a null value)."""
        from pyspark.sql import functions as F

        test, arg = self.test, self.arg
        if test == "blank":
            return F.btrim(value, F.lit(arg)) == ""
        if test == "longer_than":
            return F.length(value) > arg
        if test == "outside":
            return (value < arg[0]) | (value > arg[1])
        if test == "not_finite":
            return F.isnan(value) | (F.abs(value) == math.inf)
        if test == "equals":
            return value == arg
        if test == "below":
            return value < arg
        if test == "not_in":
            return ~value.isin(*arg)
        raise AssertionError(test)

    def broken_arrow(self, value: Any) -> Any:
        """A boolean Arrow array: whether each value breaks the rule (null for a null value)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        test, arg = self.test, self.arg
        if test == "blank":
            return pc.equal(pc.utf8_trim(value, characters=arg), "")
        if test == "longer_than":
            return pc.greater(pc.utf8_length(value), arg)  # code points, as len()
        if test == "outside":
            return pc.or_(pc.less(value, arg[0]), pc.greater(value, arg[1]))
        if test == "not_finite":
            return pc.invert(pc.is_finite(value))
        if test == "equals":
            return pc.equal(value, arg)
        if test == "below":
            return pc.less(value, arg)
        if test == "not_in":
            # A null stays null (is_in would say False): nulls never break a rule here.
            outside = pc.invert(pc.is_in(value, value_set=pa.array(arg)))
            return pc.if_else(pc.is_valid(value), outside, None)
        raise AssertionError(test)

    def probes(self) -> list[Any]:
        """Values on both sides of the rule's boundary, for tests that compare the engines."""
        test, arg = self.test, self.arg
        if test == "blank":
            return ["", arg, f"{arg}x{arg}", "x", "\u00a0", "\u2028", "\x1c", "\x85"]
        if test == "longer_than":
            return [c * n for c in ("x", "é", "😀") for n in (arg, arg + 1)]
        if test == "outside":
            return [arg[0] - 1, arg[0], 0, arg[1], arg[1] + 1, -(2**70), 2**70]
        if test == "not_finite":
            return [0, 1.5, -1e308, 1e308, 10**400]
        if test in ("equals", "below"):
            return [arg - 1, arg - 0.01, arg, float(arg), -float(arg), arg + 0.01, arg + 1]
        if test == "not_in":
            if all(isinstance(a, int) for a in arg):
                return [*arg, min(arg) - 1, max(arg) + 1]
            return [*arg, *(a.upper() for a in arg), *(f"{a} " for a in arg), ""]
        raise AssertionError(test)
