"""The refresh policy is a pure function of lifetime, expiry, config and randomness."""

from __future__ import annotations

import random

import pytest

from tokensdk import InvalidInput
from tokensdk._policy import RefreshPolicy, plan_refresh


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_windows_scale_with_lifetime() -> None:
    policy = RefreshPolicy(advisory=0.5, mandatory=0.1, jitter=0.0)

    plan = plan_refresh(300.0, 1300.0, policy, _Fixed(0.5))

    assert (plan.refresh_at, plan.mandatory_at, plan.expires) == (1150.0, 1270.0, 1300.0)
    assert plan.mandatory_window == 30.0


def test_windows_are_capped_for_long_lifetimes() -> None:
    policy = RefreshPolicy(max_advisory=900.0, max_mandatory=300.0, jitter=0.0)

    plan = plan_refresh(86400.0, 86400.0, policy, _Fixed(0.0))

    assert plan.expires - plan.refresh_at == 900.0
    assert plan.mandatory_window == 300.0


def test_jitter_spreads_between_advisory_start_and_mandatory() -> None:
    policy = RefreshPolicy(advisory=0.5, mandatory=0.1, jitter=1.0)

    earliest = plan_refresh(100.0, 100.0, policy, _Fixed(0.0)).refresh_at
    latest = plan_refresh(100.0, 100.0, policy, _Fixed(0.999999)).refresh_at

    assert earliest == 50.0
    assert latest == pytest.approx(90.0, abs=1e-3)


def test_seeded_rng_gives_reproducible_spread() -> None:
    policy = RefreshPolicy()
    first = [plan_refresh(30.0, 30.0, policy, random.Random(7)).refresh_at for _ in range(3)]
    second = [plan_refresh(30.0, 30.0, policy, random.Random(7)).refresh_at for _ in range(3)]

    assert first == second
    spread = {
        round(plan_refresh(30.0, 30.0, policy, random.Random(s)).refresh_at, 3) for s in range(50)
    }
    assert len(spread) > 40
    assert all(12.0 <= at <= 23.25 for at in spread)


def test_tiny_lifetimes_keep_order() -> None:
    plan = plan_refresh(0.01, 5.0, RefreshPolicy(), _Fixed(0.5))

    assert plan.refresh_at <= plan.mandatory_at <= plan.expires
    assert plan_refresh(0.0, 5.0, RefreshPolicy(), _Fixed(0.5)).mandatory_at == 5.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"advisory": 1.5},
        {"mandatory": -0.1},
        {"advisory": 0.1, "mandatory": 0.2},
        {"max_advisory": 0},
    ],
)
def test_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        RefreshPolicy(**kwargs)
