"""The Transformer families end to end through the same commands as the CNNs: train (with the
all-exits update), resume, eval-grid, export to standard Hugging Face directories, pretrained
weights, and the paper's truncation comparison. Tiny models (2 layers, hidden 32) on tiny text."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from sortednet_cli.engine.checkpoint import load_checkpoint
from sortednet_cli.engine.train import train
from sortednet_cli.errors import UserError
from sortednet_cli.tasks.text.glue_data import glue_spec, read_split
from sortednet_cli.tasks.text.tokenizers import train_wordpiece

from conftest import interrupt_at_update, TINY_TEXT_TRAINING, compose_config, run_cli, tiny_text_overrides


def quiet():
    return Console(file=io.StringIO(), width=120)


@pytest.fixture
def text_run(tmp_path, glue_root, text_path):
    def run(family: str, *extra: str, name: str = "run"):
        cfg = compose_config("train", [*tiny_text_overrides(family, glue_root, text_path), *TINY_TEXT_TRAINING, *extra])
        return train(cfg, tmp_path / name, console=quiet())

    return run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_all_exits_logs_every_exit_and_trains_the_mean(text_run):
    result = text_run("bert", "pool=enc_tiny", "trainer.objective=all_exits", "trainer.max_steps=4")
    rows = read_csv(result.run_dir / "metrics.csv")
    # Each step draws one width and trains both of its exits (depth 1 and 2) on one batch.
    assert len(rows) == 4 * 2
    for step in range(1, 5):
        exits = [r for r in rows if int(r["step"]) == step]
        assert [r["depth"] for r in exits] == ["1", "2"] and len({r["width"] for r in exits}) == 1
    grid = read_csv(result.run_dir / "grid.csv")
    assert len(grid) == 4 and "relative" in grid[0]


def test_all_exits_gradient_is_the_mean_of_the_exits():
    from transformers import LlamaConfig

    from sortednet_cli.models.transformer import TokenBatch, sorted_from_config
    from sortednet_cli.sorted.exits import AllExits
    from sortednet_cli.sorted.pool import build_pool
    from sortednet_cli.sorted.submodel import SubModel

    model = sorted_from_config(LlamaConfig(vocab_size=30, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40))
    ids = torch.randint(0, 30, (2, 9))
    inputs, targets = TokenBatch(ids[:, :-1]), ids[:, 1:]
    loss = lambda logits, t: F.cross_entropy(logits.flatten(0, 1), t.flatten())  # noqa: E731
    exits = AllExits(build_pool("p", [0.5], "all", (3,)), loss)
    sub = SubModel(0.5, (3,))
    exits.loss(sub, exits.forward(model, sub, inputs), targets).objective.backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(loss(model(inputs, SubModel(0.5, (k,))), targets) for k in (1, 2, 3)).div(3).backward()
    for a, p in zip(shared, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family,extra", [("bert", ["pool=enc_tiny"]), ("llama", ["pool=exits_tiny", "trainer.max_steps=12"])])
def test_interrupted_and_resumed_text_run_is_exact(text_run, tmp_path, monkeypatch, family, extra):
    """Dropout, sampled sub-models, shuffled or windowed batches and the tokenizer all come back."""
    overrides = [*extra, "trainer.log_every=3", "trainer.epochs=2", "trainer.eval_grid=false"]
    text_run(family, *overrides, name="straight")
    interrupt_at_update(monkeypatch, 5)
    assert text_run(family, *overrides, name="stopped").interrupted
    monkeypatch.undo()
    text_run(family, *overrides, f"resume={tmp_path / 'stopped'}", name="elsewhere")
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert a["step"] == b["step"] and a["task"] == b["task"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    losses = lambda run: [(r["step"], r["depth"], r["loss"]) for r in read_csv(tmp_path / run / "metrics.csv")]  # noqa: E731
    assert losses("straight") == losses("stopped")


def exported_accuracy(directory: Path, glue_root: Path) -> float:
    """The accuracy of an exported directory on the dev file, with transformers alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    examples = read_split(glue_root / "dev.tsv", glue_spec("sst2"))
    encoded = tokenizer(examples.text_a, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**encoded).logits.argmax(-1)
    return (predictions == torch.tensor(examples.labels)).float().mean().item()


def test_encoder_grid_export_and_truncation_compare(tmp_path, glue_root, text_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [*tiny_text_overrides("bert", glue_root, text_path), *TINY_TEXT_TRAINING, "trainer.epochs=4", "optim.lr=3e-3"]
    code, out, err = run_cli(["train", *base, "pool=enc_grid", "trainer.objective=all_exits", f"hydra.run.dir={tmp_path / 'sorted'}"], capsys)
    assert code == 0, err
    grid = {(float(r["width"]), r["depth"]): r for r in read_csv(tmp_path / "sorted" / "grid.csv")}
    assert len(grid) == 8 and float(grid[(1.0, "2")]["accuracy"]) > 0.9  # the words decide the label
    meta = json.loads((tmp_path / "sorted" / "grid.json").read_text())
    assert meta["metric"]["name"] == "accuracy"

    code, out, err = run_cli(["export", f"checkpoint={tmp_path / 'sorted'}", "sub=one", "sub.width=0.5", "sub.depth=1", f"hydra.run.dir={tmp_path / 'exported'}"], capsys)
    assert code == 0, err
    directory = tmp_path / "exported" / "w0.5_d1"
    config = json.loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == 32 and (directory / "model.safetensors").is_file()
    assert exported_accuracy(directory, glue_root) == pytest.approx(float(grid[(0.5, "1")]["accuracy"]), abs=1.5 / 60)

    # The paper's comparison: an ordinarily trained model, truncated, against the sorted one.
    code, out, err = run_cli(["train", *base, "pool=full", "data.train_subset=48", f"hydra.run.dir={tmp_path / 'ordinary'}"], capsys)
    assert code == 0, err
    # Another run as the baseline, evaluated with its own (here different) tokenizer.
    code, out, err = run_cli(["eval-grid", f"checkpoint={tmp_path / 'sorted'}", f"eval.baseline={tmp_path / 'ordinary'}", f"hydra.run.dir={tmp_path / 'against'}"], capsys)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ordinary")["task"] != load_checkpoint(tmp_path / "sorted")["task"]
    ordinary_full = float(read_csv(tmp_path / "ordinary" / "grid.csv")[0]["accuracy"])
    assert json.loads((tmp_path / "against" / "grid.json").read_text())["baseline"]["accuracy"] == pytest.approx(ordinary_full)
    code, out, err = run_cli(["eval-grid", f"checkpoint={tmp_path / 'ordinary'}", "pool=enc_depth", f"hydra.run.dir={tmp_path / 'truncated'}"], capsys)
    assert code == 0, err
    assert [r["depth"] for r in read_csv(tmp_path / "truncated" / "grid.csv")] == ["1", "2"]
    runs = f"runs=[{tmp_path / 'ordinary'},{tmp_path / 'truncated'},{tmp_path / 'sorted'}]"
    code, out, err = run_cli(["report", runs, f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 0, err
    summary = read_csv(tmp_path / "report" / "summary.csv")
    assert [row["pool"] for row in summary] == ["full", "enc_depth", "enc_grid"]
    assert (tmp_path / "report" / "grids.png").is_file()


def test_decoder_grid_has_perplexity_and_export_reproduces_the_loss(text_run, tmp_path, text_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = text_run("llama", "pool=exits_tiny", "trainer.max_steps=30", "data.eval_windows=20", "eval.latency=true", "eval.latency_repeats=1")
    grid = {(float(r["width"]), r["depth"]): r for r in read_csv(result.run_dir / "grid.csv")}
    for row in grid.values():
        assert float(row["perplexity"]) == pytest.approx(math.exp(float(row["loss"])), rel=1e-6)
        assert float(row["decode_ms_per_token"]) >= 0  # timed; noise may leave a tiny model at 0
    code, out, err = run_cli(["export", f"checkpoint={result.run_dir}", "sub=one", "sub.width=1", "sub.depth=1", f"hydra.run.dir={tmp_path / 'exported'}"], capsys)
    assert code == 0, err
    directory = tmp_path / "exported" / "w1_d1"
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    text = text_path.read_text()
    ids = torch.tensor(tokenizer(text[int(len(text) * 0.9):], add_special_tokens=False)["input_ids"])
    windows = torch.stack([ids[i * 16:i * 16 + 17] for i in range(20)])
    with torch.no_grad():
        logits = model(input_ids=windows[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert loss == pytest.approx(float(grid[(1.0, "1")]["loss"]), rel=1e-4)


def test_pretrained_weights_and_tokenizer_load_offline(text_run, tmp_path, glue_root):
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_wordpiece([line.split("\t")[0] for line in (glue_root / "train.tsv").read_text().splitlines()[1:]], 120)
    pretrained = tmp_path / "tiny-bert"
    BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                                             intermediate_size=60, max_position_embeddings=64)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    result = text_run("bert", f"model.pretrained={pretrained}", "pool=enc_depth", "trainer.max_steps=3")
    assert result.model.depth_limits == (3,) and result.model.config.hidden_size == 48
    assert len(read_csv(result.run_dir / "grid.csv")) == 3

    with pytest.raises(UserError, match="nowhere: not a model directory or hub id"):
        text_run("bert", f"model.pretrained={tmp_path / 'nowhere'}", name="bad")
    with pytest.raises(UserError, match="model_type 'bert' is not a supported decoder"):
        text_run("llama", f"model.pretrained={pretrained}", name="bad2")


def test_text_tasks_name_bad_input(text_run, tmp_path, glue_root, text_path):
    with pytest.raises(UserError, match=r"data=text is language modeling, which model=bert does not do \(models for it: decoder, llama\)"):
        train(compose_config("train", ["model=bert", "data=text", f"data.path={text_path}"]), tmp_path / "x", console=quiet())
    with pytest.raises(UserError, match=r"data=fake is image classification, which model=bert does not do \(models for it: cpreresnet20, mobilenetv2, resnet18, resnet50\)"):
        train(compose_config("train", ["model=bert", "data=fake"]), tmp_path / "y", console=quiet())
    with pytest.raises(UserError, match="longer than the model's context"):
        text_run("llama", "data.block_size=64")
    with pytest.raises(UserError, match="no such file"):
        text_run("llama", f"data.path={tmp_path / 'missing.txt'}")
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.tsv").write_text((glue_root / "train.tsv").read_text())
    with pytest.raises(UserError, match="two text columns|sentence1|question"):
        text_run("bert", f"data.root={tmp_path / 'pairs'}", "data.glue_task=rte")


def test_generate_and_bench_decode_through_the_cli(text_run, tmp_path, capsys):
    result = text_run("llama", "pool=exits_tiny", "trainer.max_steps=40", "data.eval_windows=10", "optim.lr=3e-3")
    checkpoint = f"checkpoint={result.run_dir}"
    outputs = {}
    for mode in ("full", "exit", "early_exit", "speculative", "speculative generate.draft_width=3", "speculative generate.draft_stop=0.5"):
        name = "tree" if "draft_width" in mode else "stop" if "draft_stop" in mode else mode
        code, out, err = run_cli(["generate", checkpoint, "prompt=ROMEO:", f"generate.mode={mode.split()[0]}", *mode.split()[1:],
                                  "generate.max_new_tokens=12", "generate.threshold=0.5", f"hydra.run.dir={tmp_path / name}"], capsys)
        assert code == 0, err
        outputs[name] = json.loads((tmp_path / name / "generation.json").read_text())
        assert out.startswith("ROMEO:") and "tokens/s" in out
    assert outputs["speculative"]["tokens"] == outputs["full"]["tokens"] == outputs["tree"]["tokens"] == outputs["stop"]["tokens"]  # lossless
    assert outputs["tree"]["stats"]["draft_width"] == 3 and outputs["stop"]["stats"]["draft_stop"] == 0.5
    assert "acceptance" in json.dumps(outputs["speculative"]["stats"])
    for bad, message in (("generate.mode=exit generate.exit=3", "1..2"), ("generate.mode=speculative generate.draft_len=0", "draft_len"),
                         ("prompt='ROMEO~'", "never seen"), ("generate.mode=early_exit generate.temperature=0.7", "greedy"),
                         ("prompt=" + "ROMEO:" * 6, "fills the model's context"),
                         ("generate.mode=speculative generate.draft_width=2 generate.temperature=0.7", "verified greedily"),
                         ("generate.mode=speculative generate.draft_stop=1.5", "draft_stop must be a probability in [0, 1)")):
        code, out, err = run_cli(["generate", checkpoint, *bad.split(), f"hydra.run.dir={tmp_path / 'bad'}"], capsys)
        assert code == 2 and message in err and "Traceback" not in err

    code, out, err = run_cli(["bench-decode", checkpoint, "bench.prompt_count=2", "bench.prompt_tokens=8", "bench.max_new_tokens=10", "bench.draft_lens=[2,auto]",
                              "bench.draft_widths=[1,2]", "bench.thresholds=[0.5]", f"hydra.run.dir={tmp_path / 'bench'}"], capsys)
    assert code == 0, err
    decode = json.loads((tmp_path / "bench" / "decode.json").read_text())
    assert "2 prompts x 10 new tokens," in out and decode["new_tokens_per_prompt"] == [10, 10]
    modes = [row["mode"] for row in decode["rows"]]
    assert modes.count("speculative") == 9 and modes.count("exit") == 2 and "library_assistant_early_exit" in modes  # chains at stops 0 and 0.5
    assert all(row["identical"] for row in decode["rows"] if row["mode"] == "speculative")
    assert [entry["label"] for entry in decode["auto_against_fixed"]] == ["E=1 K=auto", "E=1 K=auto stop=0.5", "E=1 K=auto W=2", "E=auto K=auto",
                                                                          "E=auto K=auto stop=0.5", "E=auto K=auto W=2"]
    assert decode["rows"][0]["breakdown"]["ms_per_token"]["verify"] > 0
    assert (tmp_path / "bench" / "decode.png").is_file() and decode["pick"]["label"]
    for bad, message in (("bench.temperature=-1", "bench.temperature must be >= 0"), ("bench.rounds=0", "bench.rounds must be >= 1"),
                         ("bench.draft_widths=[0]", "bench.draft_widths must be"), ("bench.draft_stops=[0,1]", "bench.draft_stops must be")):
        code, out, err = run_cli(["bench-decode", checkpoint, bad, f"hydra.run.dir={tmp_path / 'bad_bench'}"], capsys)
        assert code == 2 and message in err and "Traceback" not in err


def test_generate_refuses_an_encoder_checkpoint(text_run, tmp_path, capsys):
    result = text_run("bert", "pool=enc_tiny", "trainer.max_steps=2", "trainer.eval_grid=false")
    code, out, err = run_cli(["generate", f"checkpoint={result.run_dir}", f"hydra.run.dir={tmp_path / 'g'}"], capsys)
    assert code == 2 and "which does not decode; generate and bench-decode need one that does (decoder, llama)" in err


def test_bench_compares_the_encoder_loop_side_by_side(tmp_path, glue_root, text_path, capsys):
    code, out, err = run_cli(["bench", *tiny_text_overrides("bert", glue_root, text_path), "bench.quick=true", "bench.batch_size=16", "bench.rounds=2",
                              "threads=1", f"hydra.run.dir={tmp_path / 'bench'}"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["grid_same_metric"] and report["train_speedup"] > 0 and report["kind"] == "text"


def write_pairs(root: Path, header: str, rows: list[str]) -> Path:
    root.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (root / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sentence_pairs_and_regression_train_and_score(text_run, tmp_path, family):
    """RTE-style pairs (token types for BERT) and STS-B regression (one output, MSE, Pearson with
    Spearman beside it) through training and the grid."""
    words = ["the cat sat", "a dog ran", "birds fly high", "the sun is hot", "rain falls down", "we like tea"]
    rte = [f"{i}\t{words[i % 6]}\t{words[(i * 5) % 6]}\t{'entailment' if i % 6 == (i * 5) % 6 else 'not_entailment'}" for i in range(64)]
    root = write_pairs(tmp_path / "rte", "index\tsentence1\tsentence2\tlabel", rte)
    result = text_run(family, f"data.root={root}", "data.glue_task=rte", "pool=enc_tiny", "trainer.max_steps=3")
    assert 0 <= result.summary["quick_eval"][0]["accuracy"] <= 1
    sts = [f"{i}\tg\tf\ty\t{i}\ts1\ts2\t{words[i % 6]}\t{words[(i * 5) % 6]}\t{5.0 if i % 6 == (i * 5) % 6 else (i % 5) * 0.5:.2f}" for i in range(64)]
    root = write_pairs(tmp_path / "stsb", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore", sts)
    result = text_run(family, f"data.root={root}", "data.glue_task=stsb", "pool=enc_tiny", "trainer.max_steps=3", name="sts")
    grid = read_csv(result.run_dir / "grid.csv")
    assert {"pearson", "spearman"} <= set(grid[0]) and all(-1 <= float(r["pearson"]) <= 1 for r in grid)
    assert result.model.config.num_labels == 1


def test_decoder_pretrained_and_bpe_tokenizer(text_run, tmp_path, text_path):
    """model.pretrained for the decoder (a tiny save_pretrained model with its tokenizer), and a
    byte-level BPE tokenizer trained on the text, saved with the run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sortednet_cli.tasks.text.tokenizers import build_char_tokenizer

    tokenizer = build_char_tokenizer(text_path.read_text())
    pretrained = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                 intermediate_size=48, max_position_embeddings=64)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    result = text_run("llama", f"model.pretrained={pretrained}", "pool=exits", "trainer.max_steps=3", "data.eval_windows=4")
    assert result.model.depth_limits == (3,) and len(read_csv(result.run_dir / "grid.csv")) == 3

    result = text_run("llama", "data.tokenizer=bpe", "data.vocab_size=300", "pool=exits_tiny", "trainer.max_steps=3", "data.eval_windows=4", name="bpe")
    state = load_checkpoint(result.run_dir)["task"]["tokenizer"]
    assert state["kind"] == "byte_bpe" and result.model.config.vocab_size == len(json.loads(state["tokenizer_json"])["model"]["vocab"])


def test_a_pretrained_decoder_of_another_layout_runs_every_command_from_its_bare_checkpoint(tmp_path, text_path, capsys):
    """A GPT-NeoX directory (weights and its own BPE tokenizer) through train, eval-grid from the
    checkpoint, export (the directory carries the tokenizer; the Auto class reproduces the grid)
    and generate: the tokenizer travels in the checkpoint, not from the pretrained directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from sortednet_cli.tasks.text.tokenizers import train_byte_bpe

    tokenizer = train_byte_bpe([text_path.read_text()], 300, roberta=False)
    pretrained = tmp_path / "tiny-pythia"
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, rotary_pct=0.5)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    cfg = compose_config("train", ["model=decoder", f"model.pretrained={pretrained}", f"data.path={text_path}", "data.block_size=16",
                                   "pool=exits_tiny", "trainer.max_steps=4", *TINY_TEXT_TRAINING])
    result = train(cfg, tmp_path / "run", console=quiet())
    assert result.model.config.model_type == "gpt_neox" and result.model.depth_limits == (3,)
    grid = {(float(r["width"]), r["depth"]): float(r["loss"]) for r in read_csv(result.run_dir / "grid.csv")}
    assert len(grid) == 6
    for sub_dir in tmp_path.glob("tiny-pythia/*"):  # from here on, only the checkpoint
        sub_dir.unlink()
    code, _, err = run_cli(["export", f"checkpoint={result.run_dir}", "sub=one", "sub.width=0.5", "sub.depth=2",
                            f"hydra.run.dir={tmp_path / 'exported'}"], capsys)
    assert code == 0, err
    directory = tmp_path / "exported" / "w0.5_d2"
    model, exported_tokenizer = AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers == 2
    text = text_path.read_text()
    ids = torch.tensor(exported_tokenizer(text[int(len(text) * 0.9):], add_special_tokens=False)["input_ids"])
    windows = torch.stack([ids[i * 16:i * 16 + 17] for i in range((len(ids) - 1) // 16)])
    with torch.no_grad():
        loss = F.cross_entropy(model(input_ids=windows[:, :-1]).logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert loss == pytest.approx(grid[(0.5, "2")], rel=1e-4)
    code, out, err = run_cli(["generate", f"checkpoint={result.run_dir}", "prompt=ROMEO:", "generate.mode=speculative",
                              "generate.max_new_tokens=8", f"hydra.run.dir={tmp_path / 'g'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "g" / "generation.json").read_text())["stats"]["new_tokens"] == 8
