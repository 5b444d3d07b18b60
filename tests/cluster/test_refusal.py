"""Which resources a job may ask for when a Ray cluster can place workers: pure policy, no cluster needed."""

from __future__ import annotations

from actors.supervisor import _dispatch as plan


def test_a_resource_name_ray_keeps_is_refused_by_the_dispatch_policy_itself() -> None:
    """The policy said "placeable" for any need once Ray was configured; the Ray-reserved names were checked in a
    second call beside it, at the submit's call site only."""
    why = plan.refusal({"bundle": 1.0}, [{"CPU": 1.0}], placeable=True)
    assert "'bundle' is one Ray keeps for itself" in why
    assert "one Ray keeps for itself" in plan.refusal({"CPU_group_0_abc": 1.0}, [], placeable=True)
    assert plan.refusal({"GPU": 1.0}, [{"CPU": 1.0}], placeable=True) == ""  # Ray may place a worker with one
    assert plan.refusal({"bundle": 1.0}, [{"bundle": 2.0}], placeable=True) == ""  # a worker offers it: it runs
    assert "no worker offers" in plan.refusal({"GPU": 1.0}, [{"CPU": 1.0}], placeable=False)
