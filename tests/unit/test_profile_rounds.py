"""The order of the profiler's phases inside its measurement rounds."""

from __future__ import annotations

from collections import Counter

import pytest

from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.rounds import round_orders, williams_cycle


@pytest.mark.parametrize("n", range(1, 9))
def test_a_cycle_is_a_latin_square_balanced_for_the_previous_phase(n: int) -> None:
    rows = williams_cycle(n)
    assert len(rows) == (2 * n if n % 2 and n > 1 else n)
    for row in rows:
        assert sorted(row) == list(range(n))
    # Every phase runs equally often in every position of a round.
    positions = Counter((phase, i) for row in rows for i, phase in enumerate(row))
    assert set(positions) == {(p, i) for p in range(n) for i in range(n)}
    assert len(set(positions.values())) == 1
    # Every ordered pair of different phases is adjacent equally often: no phase always
    # follows the same one.
    pairs = Counter((row[i], row[i + 1]) for row in rows for i in range(n - 1))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1


def test_rounds_repeat_the_cycle_and_start_with_the_first_phase() -> None:
    assert round_orders(2, 5) == [[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]
    orders = round_orders(5, 23)
    cycle = williams_cycle(5)
    assert orders == [cycle[k % 10] for k in range(23)]
    assert orders[0][0] == 0
    with pytest.raises(ValueError):
        williams_cycle(0)


def test_profile_config_names_the_rounds_for_the_provenance() -> None:
    config = ProfileConfig(iters=3)
    assert config.rounds() == [
        ["unfrozen", "frozen"],
        ["frozen", "unfrozen"],
        ["unfrozen", "frozen"],
    ]
    linear = ProfileConfig(iters=4, linearity=True).rounds()
    assert len(linear) == 4
    assert all(
        sorted(r) == sorted(n for n, _ in ProfileConfig(linearity=True).phases) for r in linear
    )
    assert linear[1][1] != linear[0][1]  # the order rotates from round to round
    record = config.measurement_record()
    assert record["order"] == "interleaved" and record["rounds"] == config.rounds()


def test_sequential_order_runs_each_phase_back_to_back() -> None:
    config = ProfileConfig(iters=2, phase_order="sequential", linearity=True)
    assert config.rounds() == [[name] * 2 for name, _ in config.phases]
    assert config.measurement_record()["order"] == "sequential"


def test_an_unknown_phase_order_names_the_flag() -> None:
    from megatron_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="--phase-order must be one of interleaved, sequential"):
        ProfileConfig(phase_order="random")
