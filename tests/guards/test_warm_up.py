"""Guards read their models at start, in the background: the first request is not charged for it."""

from __future__ import annotations

from pathlib import Path

from aiguardian.core.bus import MemoryBus
from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.loader import GuardLoader
from aiguardian.guards.pipeline import Pipeline
from aiguardian.guards.policy import parse
from aiguardian.guards.service import GuardService
from tests.conftest import make_settings
from tests.fakes.guards import HERE, SlowToLoadGuard


def policy(load_seconds: float) -> str:
    """The guard's first check (its "model read") takes several times its timeout. Each test its own
    ``load_seconds``: instances are shared by the process, per guard and options."""
    return f"""
policies:
  default:
    input:
      - {{guard: "{HERE}:SlowToLoadGuard", load_seconds: {load_seconds}, timeout_ms: 100}}
"""


async def test_a_guard_that_is_slow_to_load_does_not_time_out_the_first_request(tmp_path: Path) -> None:
    policy_file = tmp_path / "guards.yaml"
    policy_file.write_text(policy(0.5))
    service = GuardService(
        make_settings(tmp_path, "sqlite", None, guards_policy_file=policy_file, guards_reload_interval=0),
        MemoryBus(),
    )
    SlowToLoadGuard.LOADS.clear()
    await service.start()
    try:
        # At once, while the warm-up is still reading the model: the check waits for it, then is quick.
        decision = await service.run(
            service.policy_for("/v1/chat/completions", None, None),
            Direction.INPUT,
            GuardContext(text="hello"),
        )
    finally:
        await service.close()
    assert decision.action is Action.ALLOW, [v.reason_codes for v in decision.verdicts]
    assert SlowToLoadGuard.LOADS == [0.5]  # read once, by the warm-up


async def test_without_the_warm_up_the_same_guard_fails_closed() -> None:
    """The control: the same first check made inside a request is past its timeout and blocks."""
    entries = parse(policy(0.4)).named("default").entries(Direction.INPUT)
    loader = GuardLoader()
    loader.adopt({entries[0].key: SlowToLoadGuard(load_seconds=0.4)})
    decision = await Pipeline(loader).run(
        entries, GuardContext(text="hello", direction=Direction.INPUT), thread_above_chars=2000
    )
    assert decision.action is Action.BLOCK
    assert decision.verdicts[0].reason_codes == ["GUARD_TIMEOUT"]
