"""`sortednet describe` reads no data, for any model family (README: "It reads no data")."""

from __future__ import annotations

import csv

import pytest

from sortednet_cli.models import FAMILIES

from conftest import compose_config, run_cli

# Every family, its presets, and the other data and tokenizer kinds a family pairs with.
CASES = [[f"model={name}"] for name in sorted({*FAMILIES.names(), "bert", "roberta", "llama"})] + [
    ["model=decoder", "data=instructions", "data.max_length=128"],  # its default 256 exceeds the default context
    ["model=llama", "data.tokenizer=bpe"],
    ["model=roberta", "data.glue_task=mrpc"],
    ["model=bert", "data.glue_task=stsb"],
]


@pytest.mark.parametrize("overrides", CASES, ids=" ".join)
def test_describe_reads_no_data(overrides, tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    data = compose_config("describe", overrides).data
    data_keys = [f"data.{key}={missing}" for key in ("root", "path") if key in data]
    assert data_keys, f"data={data.name} has neither data.root nor data.path"
    code, out, err = run_cli(["describe", *overrides, *data_keys, "pool=full", f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    assert code == 0, err
    with open(tmp_path / "out" / "pool.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(rows[0]["params"]) > 0 and float(rows[0]["mflops"]) > 0
    assert not missing.exists()


def test_describe_counts_a_text_model_at_the_configured_vocabulary(tmp_path, capsys):
    """Without data, a tokenizer trained here is not trained: the embedding has data.vocab_size rows."""
    args = ["describe", "model=bert", "model.layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "pool=full",
            f"data.root={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'out'}"]
    params = {}
    for vocab in (1000, 2000):
        code, _, err = run_cli([*args, f"data.vocab_size={vocab}"], capsys)
        assert code == 0, err
        with open(tmp_path / "out" / "pool.csv", newline="") as f:
            params[vocab] = int(next(csv.DictReader(f))["params"])
    assert params[2000] - params[1000] == 1000 * 32  # one 32-wide embedding row per token


@pytest.mark.parametrize("model", ["cpreresnet20", "bert", "roberta", "llama"])
def test_the_answers_without_data_have_the_shape_of_those_with_it(model, request):
    """The same fields (their values those a trained tokenizer gives, but for the vocabulary size)
    and an input of the same kind, with the longest length."""
    import torch

    from sortednet_cli.tasks import build_task

    from conftest import tiny_text_overrides

    text = model != "cpreresnet20"
    overrides = tiny_text_overrides(model, request.getfixturevalue("glue_root"), request.getfixturevalue("text_path")) if text else [f"model={model}", "data=fake"]
    cfg = compose_config("train", overrides)
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    without, with_data = task.model_fields_without_data(), task.model_fields()
    assert without.keys() == with_data.keys()
    assert {k: v for k, v in without.items() if k != "vocab_size"} == {k: v for k, v in with_data.items() if k != "vocab_size"}
    nominal, real = task.example_input_without_data(2), task.example_input(2)
    assert type(nominal) is type(real)
    if text:
        assert nominal.input_ids.shape[0] == 2 and nominal.input_ids.shape[1] >= real.input_ids.shape[1]
        assert int(nominal.input_ids.max()) < without["vocab_size"]
    else:
        assert nominal.shape == real.shape and without == with_data
