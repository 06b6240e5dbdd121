import pytest

from sortednet_cli.errors import UserError
from sortednet_cli.sorted.pool import build_pool
from sortednet_cli.sorted.submodel import SubModel, format_depth, parse_depth, scaled

from conftest import compose_config

LIMITS = (2, 2, 2)


def preset(name: str):
    cfg = compose_config("describe", [f"pool={name}"])
    from sortednet_cli.sorted.pool import pool_from_config

    return pool_from_config(cfg.pool, LIMITS)


@pytest.mark.parametrize(
    "name, size", [("160", 160), ("width_only", 20), ("depth_only", 8), ("full", 1), ("lcs7", 7), ("tiny", 4)]
)
def test_preset_sizes(name, size):
    assert len(preset(name)) == size


def test_160_is_every_width_with_every_depth_in_grid_order():
    pool = preset("160")
    assert pool.widths == [round(0.05 * k, 2) for k in range(1, 21)]
    assert [format_depth(s.depth) for s in pool if s.width == 1.0] == ["1-1-1", "1-1-2", "1-2-1", "2-1-1", "1-2-2", "2-1-2", "2-2-1", "2-2-2"]
    assert pool.members[0] == SubModel(0.05, (1, 1, 1))
    assert pool.largest == SubModel(1.0, (2, 2, 2))
    assert len(set(pool.members)) == 160


def test_full_pool_is_the_whole_network():
    assert preset("full").members == (SubModel(1.0, (2, 2, 2)),)


def test_depth_spec_forms():
    pool = build_pool("x", [1.0], [1, [1, 2, 2], "max"], LIMITS)
    assert [m.depth for m in pool] == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize(
    "widths, depths, message",
    [
        ([0.0, 1.0], "all", "outside (0, 1]"),
        ([1.5], "all", "outside (0, 1]"),
        ([], "all", "pool.widths is empty"),
        ([0.5, 0.5], "all", "more than once"),
        ([1.0], [3], "stage 1, which has 1..2"),
        ([1.0], [0], "stage 1, which has 1..2"),
        ([1.0], [[1, 2]], "needs 3 whole numbers"),
        ([1.0], [], "pool.depths is empty"),
        ([1.0], [1, [1, 1, 1]], "more than once"),
        ([1.0], "some", "must be 'all' or a list"),
    ],
)
def test_bad_pools_are_rejected(widths, depths, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_pool("bad", widths, depths, LIMITS)


def test_channel_rounding_is_half_up_with_at_least_one():
    assert scaled(16, 0.05) == 1  # 0.8
    assert scaled(64, 0.35) == 22  # 22.4
    assert scaled(20, 0.15) == 3  # 3.0 despite float error
    assert scaled(10, 0.25) == 3  # 2.5 rounds up
    assert scaled(16, 0.01) == 1
    assert scaled(256, 1.0) == 256


def test_depth_text_round_trip():
    assert parse_depth(format_depth((1, 2, 2))) == (1, 2, 2)
    with pytest.raises(ValueError):
        parse_depth("a-b")
