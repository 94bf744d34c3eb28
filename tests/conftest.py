"""Settings shared by the whole suite."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Property tests judge correctness, never speed: on a loaded 2-core machine generating an
# example can be slow, which is not a failure of the code under test. Tests keep their own
# example counts; this profile only lifts the timing checks.
settings.register_profile(
    "suite",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("suite")
