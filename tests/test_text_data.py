"""The text families' bad input is one line, and nothing a run wrote changes: a text file that is
not UTF-8 or holds characters the run's character tokenizer never saw, wherever it is read
(training, eval-grid with a data.path override, a resume), a resume override the checkpoint's
own config does not take, a BPE vocabulary smaller than its alphabet, a size key below 1, and
the model families' inputs: a model_type no layout supports, a pretrained directory without a
tokenizer, a train into a directory that holds a run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sortednet_cli.tasks import build_task

from conftest import TINY_DECODER, TINY_TEXT_TRAINING, compose_config, run_cli, tiny_text_overrides

LLAMA = ["model=llama", *TINY_DECODER, *TINY_TEXT_TRAINING]


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run and its bytes (the claim file aside: a refused command takes and drops it)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".claim.json"}


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, text_path) -> Path:
    """A finished tiny character-level run trained through the CLI (with its .hydra/ record)."""
    run = tmp_path_factory.mktemp("llama") / "run"
    code, _, _ = run_cli(["train", *LLAMA, f"data.path={text_path}", "trainer.max_steps=2", "trainer.eval_grid=false", f"hydra.run.dir={run}"])
    assert code == 0 and (run / "last.pt").is_file()
    return run


def test_text_that_is_not_utf8_is_one_line_wherever_it_is_read(llama_run, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait, crème brûlée, façade.\n".encode("latin-1") * 20)
    message = f"data.path={latin1} is not UTF-8 text"
    code, _, err = run_cli(["train", *LLAMA, f"data.path={latin1}", f"hydra.run.dir={tmp_path / 'bad'}"], capsys)
    assert message in one_line(code, err)

    code, _, err = run_cli(["eval-grid", f"checkpoint={llama_run}", f"data.path={latin1}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], capsys)
    assert message in one_line(code, err)
    code, _, err = run_cli(["train", f"resume={llama_run}", f"data.path={latin1}", f"hydra.run.dir={tmp_path / 'resume'}"], capsys)
    assert message in one_line(code, err)


def test_characters_the_saved_tokenizer_never_saw_are_named_wherever_it_encodes(llama_run, tmp_path, capsys):
    accents = tmp_path / "accents.txt"
    accents.write_text("ROMEO: the night is young, señor; my lord, good morrow, café.\n" * 10)
    before = snapshot(llama_run)
    for command in (["eval-grid", f"checkpoint={llama_run}", "eval.latency=false"], ["train", f"resume={llama_run}"]):
        code, _, err = run_cli([*command, f"data.path={accents}", f"hydra.run.dir={tmp_path / command[0]}"], capsys)
        line = one_line(code, err)
        # The tiny training text has no punctuation or accents (and no 'a', 'c' or 'f').
        assert f"data.path={accents} has characters this run's character tokenizer has never seen: ',' '.' ';' 'a' 'c' 'f' 'é' 'ñ'; " in line, command
        assert "or train a new run on this text" in line
    assert not (tmp_path / "eval-grid" / "grid.csv").exists()
    assert snapshot(llama_run) == before


def test_a_resume_checks_its_overrides_against_the_checkpoints_own_config(llama_run, tmp_path, text_path, capsys):
    before = snapshot(llama_run)
    refused = {
        # Checked against the run's decoder and text data, not the default CNN and CIFAR-10.
        "model.layers=4": "'model.layers=4' cannot change when resuming (only trainer.device,",
        "data.block_size=8": "'data.block_size=8' cannot change when resuming",
        f"data.root={tmp_path}": "data.root: not a key of this checkpoint's data (text) or a bad value: Key 'root' not in 'TextDataConfig'",
        "data.path=[1,2]": "data.path: not a key of this checkpoint's data (text) or a bad value",
        f"data.path={tmp_path / 'missing.txt'}": f"data.path={tmp_path / 'missing.txt'}: no such file",
    }
    for override, message in refused.items():
        code, _, err = run_cli(["train", f"resume={llama_run}", override, f"hydra.run.dir={tmp_path / 'refused'}"], capsys)
        assert message in one_line(code, err), override
    assert snapshot(llama_run) == before

    copy = tmp_path / "copy.txt"
    copy.write_text(text_path.read_text())
    code, out, err = run_cli(["train", f"resume={llama_run}", f"data.path={copy}", f"hydra.run.dir={tmp_path / 'resumed'}"], capsys)
    assert code == 0, err
    assert f"resuming {llama_run} at step 2" in out


@pytest.mark.parametrize("size", [0, 256])
def test_a_bpe_vocabulary_smaller_than_its_alphabet_is_refused(tmp_path, text_path, capsys, size):
    code, _, err = run_cli(["train", *LLAMA, f"data.path={text_path}", "data.tokenizer=bpe", f"data.vocab_size={size}", f"hydra.run.dir={tmp_path}"], capsys)
    assert f"data.vocab_size must be >= 257 for data.tokenizer=bpe, its 256 bytes and <|endoftext|> (got {size})" in one_line(code, err)
    assert not (tmp_path / "last.pt").exists()


def test_the_smallest_bpe_vocabulary_is_its_alphabet(text_path: Path):
    cfg = compose_config("train", [*LLAMA, f"data.path={text_path}", "data.tokenizer=bpe", "data.vocab_size=257"])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"), False)
    assert len(task.tokenizer) == 257


@pytest.mark.parametrize("model, override", [("llama", "model.context=0"), ("bert", "model.max_length=0")])
def test_a_size_below_one_names_its_key_before_the_data_checks_it(tmp_path, glue_root, text_path, capsys, model, override):
    code, _, err = run_cli(["train", *tiny_text_overrides(model, glue_root, text_path), *TINY_TEXT_TRAINING, override, f"hydra.run.dir={tmp_path}"], capsys)
    key = override.split("=")[0]
    assert one_line(code, err) == f"sortednet: error: {key} must be >= 1 (got 0)"
    assert not (tmp_path / "last.pt").exists()


class TestModelFamilyInputs:
    """model=encoder / model=decoder take any supported model_type: what they cannot take is one
    line through `sortednet train`, written before any run file."""

    @pytest.fixture
    def save_tiny(self, capsys):
        """A tiny library model of `model_type` saved (weights and config.json, no tokenizer)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        def save(directory: Path, model_type: str, **sizes) -> Path:
            config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          max_position_embeddings=32, **sizes)
            AutoModelForCausalLM.from_config(config).save_pretrained(directory)
            capsys.readouterr()  # the library's progress bar is not the command's output
            return directory

        return save

    def test_a_pretrained_model_type_no_layout_supports(self, save_tiny, tmp_path, text_path, capsys):
        opt = save_tiny(tmp_path / "opt", "opt", ffn_dim=32, word_embed_proj_dim=16)
        run = tmp_path / "run"
        code, _, err = run_cli(["train", *LLAMA, "model=decoder", f"model.pretrained={opt}", f"data.path={text_path}", f"hydra.run.dir={run}"], capsys)
        line = one_line(code, err)
        assert re.search(rf"model.pretrained={opt}: model_type 'opt' is not a supported decoder \(supported: [a-z0-9_, -]*\bllama\b", line), line
        assert "how to add an architecture" in line
        assert not {"last.pt", "metrics.csv", "summary.json"} & {p.name for p in run.iterdir()}

    def test_an_encoder_arch_that_is_a_decoder(self, tmp_path, glue_root, text_path, capsys):
        code, _, err = run_cli(["train", *tiny_text_overrides("encoder", glue_root, text_path), *TINY_TEXT_TRAINING, "model.arch=gpt2",
                                f"hydra.run.dir={tmp_path}"], capsys)
        assert re.search(r"model_type 'gpt2' is not a supported encoder \(supported: [a-z0-9_, -]*\bbert\b", one_line(code, err))
        assert not (tmp_path / "last.pt").exists()

    def test_a_pretrained_directory_without_a_tokenizer(self, save_tiny, tmp_path, text_path, capsys):
        bare = save_tiny(tmp_path / "bare", "llama", intermediate_size=32)
        code, _, err = run_cli(["train", *LLAMA, "model=decoder", f"model.pretrained={bare}", f"data.path={text_path}", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
        assert one_line(code, err) == (f"sortednet: error: model.pretrained={bare} holds no tokenizer (no tokenizer.json or tokenizer_config.json): "
                                       "save the model's tokenizer there with tokenizer.save_pretrained(dir)")
        assert not (tmp_path / "run" / "last.pt").exists()

    def test_a_train_into_a_directory_that_holds_a_run_changes_none_of_it(self, save_tiny, llama_run, tmp_path, text_path, capsys):
        before = snapshot(llama_run)
        opt = save_tiny(tmp_path / "opt", "opt", ffn_dim=32, word_embed_proj_dim=16)
        # Hydra would write .hydra/ over the run's own record before the bad model is found.
        for extra, what_to_do in (([*LLAMA, "model=decoder", f"model.pretrained={opt}", f"data.path={text_path}"], f"continue it with `sortednet train resume={llama_run}`"),
                                  ([f"resume={llama_run}"], "drop hydra.run.dir")):
            code, _, err = run_cli(["train", *extra, f"hydra.run.dir={llama_run}"], capsys)
            assert f"hydra.run.dir={llama_run} already holds a train run (last.pt); {what_to_do}" in one_line(code, err)
        # nor may another command write its own .hydra/ record over the run's
        for command in ("eval-grid", "export", "generate"):
            code, _, err = run_cli([command, f"checkpoint={llama_run}", f"hydra.run.dir={llama_run}"], capsys)
            assert f"hydra.run.dir={llama_run} already holds a train run (last.pt); its .hydra/ record is the run's own: give {command} a directory of its own" in one_line(code, err)
        assert snapshot(llama_run) == before
