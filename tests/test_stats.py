"""reserve.stats: the project's one percentile."""

from __future__ import annotations

import math

import pytest

from reserve.stats import quantile


def test_percentiles_interpolate_between_the_closest_ranks():
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert quantile([5.0, 1.0, 3.0], 0.5) == 3.0  # order does not matter


def test_one_value_is_its_own_percentile_and_none_has_none():
    assert quantile([7.0], 0.95) == 7.0
    assert math.isnan(quantile([], 0.95))
    with pytest.raises(ValueError):
        quantile([1.0, 2.0], 1.0)
