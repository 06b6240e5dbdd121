from collections import Counter
from types import SimpleNamespace

import pytest

from sortednet_cli.errors import UserError
from sortednet_cli.sorted.pool import build_pool
from sortednet_cli.sorted.sampler import build_sampler

POOL = build_pool("t", [0.25, 0.5, 1.0], [1, "max"], (2, 2, 2))  # 6 sub-models


def sampler(name, weights=None, alpha=None, seed=0):
    cfg = SimpleNamespace(name=name, weights=weights, alpha=alpha)
    return build_sampler(cfg, POOL, seed, cost=lambda sub: sub.width * sum(sub.depth))


def frequencies(s, steps=6000, g=1):
    counts = Counter(s.draw(step, d, g) for step in range(steps) for d in range(g))
    total = sum(counts.values())
    return {sub: counts[sub] / total for sub in POOL}


def test_uniform_draws_every_member_equally_often():
    for freq in frequencies(sampler("uniform")).values():
        assert abs(freq - 1 / 6) < 0.02


def test_draws_are_a_pure_function_of_seed_step_and_draw():
    a, b = sampler("uniform", seed=3), sampler("uniform", seed=3)
    seq = [a.draw(step, d, 4) for step in range(50) for d in range(4)]
    assert seq == [b.draw(step, d, 4) for step in range(50) for d in range(4)]
    # any order of asking gives the same answers (what resuming and DDP ranks rely on)
    assert [b.draw(step, d, 4) for step in reversed(range(50)) for d in range(4)][-4:] == seq[:4]
    assert seq != [sampler("uniform", seed=4).draw(step, d, 4) for step in range(50) for d in range(4)]


def test_weighted_follows_given_weights():
    freq = frequencies(sampler("weighted", weights=[1, 0, 0, 0, 0, 3]))
    assert abs(freq[POOL.members[0]] - 0.25) < 0.02 and abs(freq[POOL.members[5]] - 0.75) < 0.02
    assert freq[POOL.members[2]] == 0


def test_weighted_alpha_is_proportional_to_cost_power():
    s = sampler("weighted", alpha=1.0)
    costs = [sub.width * sum(sub.depth) for sub in POOL]
    assert s.probabilities == pytest.approx([c / sum(costs) for c in costs])
    assert sampler("weighted", alpha=0.0).probabilities == pytest.approx([1 / 6] * 6)


def test_weighted_rejects_bad_weights():
    with pytest.raises(UserError, match="has 2 entries but the pool has 6"):
        sampler("weighted", weights=[1, 2])
    with pytest.raises(UserError, match="needs sampler.weights"):
        sampler("weighted")


def test_sandwich_trains_largest_smallest_then_random():
    s = sampler("sandwich")
    for step in range(20):
        assert s.draw(step, 0, 4) == POOL.largest
        assert s.draw(step, 1, 4) == POOL.smallest
    others = Counter(s.draw(step, d, 4) for step in range(3000) for d in (2, 3))
    assert len(others) == 6
    # one draw per step: the roles take turns
    assert [s.draw(step, 0, 1) for step in range(2)] == [POOL.largest, POOL.smallest]


def test_full_always_trains_the_largest():
    assert set(frequencies(sampler("full"), steps=100)) == set(POOL) and sampler("full").draw(7, 0, 1) == POOL.largest


def test_width_major_draws_widths_by_weight_then_depths_alike():
    freq = frequencies(sampler("width_major", alpha=1.0))
    by_width = {w: sum(f for sub, f in freq.items() if sub.width == w) for w in (0.25, 0.5, 1.0)}
    for w, share in by_width.items():  # P(width) = width / (0.25 + 0.5 + 1.0)
        assert abs(share - w / 1.75) < 0.02
    wide = [f for sub, f in freq.items() if sub.width == 1.0]
    assert abs(wide[0] - wide[1]) < 0.02
    explicit = frequencies(sampler("width_major", weights=[0, 0, 1]))
    assert sum(f for sub, f in explicit.items() if sub.width == 1.0) == 1.0
    with pytest.raises(UserError, match="has 2 entries but the pool has 3 widths"):
        sampler("width_major", weights=[1, 1])


def test_unknown_sampler_names_the_known_ones():
    with pytest.raises(UserError, match=r"sampler.name='bogus' is not known \(known: full, sandwich, uniform, weighted, width_major\)"):
        sampler("bogus")
