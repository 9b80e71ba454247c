"""When to refresh: advisory and mandatory windows with jitter. Pure.

A token of lifetime ``L`` expires at ``E``. Two windows end at ``E``:

    issued ........ refresh_at ... advisory ....... mandatory ...... E
                    (random)       window starts    window starts
    callers get the current token  | background refresh | callers wait for a refresh

- In the **advisory** window a background refresh runs; callers keep receiving the
  current token, and a failure is retried with backoff and reported, not raised.
- In the **mandatory** window callers wait for the (single) refresh; its failure
  is raised to them.

The background refresh fires at a random point between the start of the advisory
window and ``jitter`` of the way to the mandatory window, so that many sessions
started together spread their refreshes instead of stampeding the service. The
defaults draw it from 40 % to 77.5 % of the lifetime: wide enough that a fleet
started at one instant peaks below twice its mean refresh rate, and early enough
that a failed refresh has time to be retried before callers must wait.
"""

from __future__ import annotations

import random
from typing import Protocol

import attrs

from tokensdk._errors import InvalidInput

__all__ = ["RefreshPlan", "RefreshPolicy", "clamp_plan", "plan_refresh"]


class RandomSource(Protocol):
    """Where jitter comes from (``random.Random`` fits)."""

    def random(self) -> float:
        """Return a float in [0, 1)."""
        ...


def _check_fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{attribute.name} must be between 0 and 1")


def _check_positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise InvalidInput(f"{attribute.name} must be positive")


@attrs.frozen
class RefreshPolicy:
    """How early tokens are refreshed, scaled to their lifetime.

    Attributes:
        advisory: Fraction of the lifetime before expiry where background refresh starts.
        mandatory: Fraction of the lifetime before expiry where callers must wait.
        max_advisory: Upper bound of the advisory window in seconds.
        max_mandatory: Upper bound of the mandatory window in seconds.
        jitter: How far (0..1) into the gap between the two windows the background
            refresh may be drawn; 0 refreshes exactly when the advisory window opens.
        min_mandatory: Lower bound of the mandatory window in seconds (covers one
            round trip, so a token is never handed out about to expire in flight).
    """

    advisory: float = attrs.field(default=0.6, validator=_check_fraction)
    mandatory: float = attrs.field(default=0.1, validator=_check_fraction)
    max_advisory: float = attrs.field(default=15 * 60.0, validator=_check_positive)
    max_mandatory: float = attrs.field(default=5 * 60.0, validator=_check_positive)
    jitter: float = attrs.field(default=0.75, validator=_check_fraction)
    min_mandatory: float = attrs.field(default=0.05, validator=_check_positive)

    def __attrs_post_init__(self) -> None:
        if self.mandatory > self.advisory:
            raise InvalidInput("the mandatory window cannot be larger than the advisory one")


@attrs.frozen
class RefreshPlan:
    """The schedule for one token, in the same time base as the ``expires`` given.

    Attributes:
        refresh_at: When the background refresh should run.
        mandatory_at: From when callers wait for a refresh instead of using the token.
        expires: When the token expires.
    """

    refresh_at: float
    mandatory_at: float
    expires: float

    @property
    def mandatory_window(self) -> float:
        """Length of the mandatory window in seconds."""
        return self.expires - self.mandatory_at


def plan_refresh(
    lifetime: float, expires: float, policy: RefreshPolicy, rng: RandomSource = random
) -> RefreshPlan:
    """Plan the refresh of a token.

    Args:
        lifetime: The token's lifespan in seconds, as granted.
        expires: When it expires (any time base; the plan uses the same).
        policy: The window sizes.
        rng: The random source for jitter.

    Returns:
        The plan, with ``refresh_at <= mandatory_at <= expires``.
    """
    lifetime = max(lifetime, 0.0)
    mandatory = min(max(lifetime * policy.mandatory, policy.min_mandatory), policy.max_mandatory)
    mandatory = min(mandatory, lifetime)
    advisory = min(max(lifetime * policy.advisory, mandatory), policy.max_advisory)
    advisory = max(advisory, mandatory)
    gap = advisory - mandatory
    refresh_at = expires - advisory + gap * policy.jitter * rng.random()
    return RefreshPlan(refresh_at=refresh_at, mandatory_at=expires - mandatory, expires=expires)


def clamp_plan(plan: RefreshPlan, now_mono: float, wall_left: float) -> float:
    """When to refresh a token planned in monotonic time, by the earlier of both clocks.

    Args:
        plan: The plan, in monotonic time.
        now_mono: Monotonic time now.
        wall_left: Seconds the token has left by the wall clock.

    Returns:
        The monotonic time of the background refresh.
    """
    # If the wall clock says the token has less time than the monotonic one (a
    # suspended machine, a clock step), refresh by the earlier of the two.
    at = plan.refresh_at
    wall_refresh_at = now_mono + wall_left - (plan.expires - plan.refresh_at)
    return min(at, wall_refresh_at)
