"""data=text's bad input is one line: a file that is not UTF-8, wherever it is read (training,
eval-grid with a data.path override, a resume), and a BPE vocabulary smaller than its alphabet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sortednet_cli.tasks import build_task

from conftest import TINY_DECODER, TINY_TEXT_TRAINING, compose_config, run_cli

LLAMA = ["model=llama", *TINY_DECODER, *TINY_TEXT_TRAINING]


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_text_that_is_not_utf8_is_one_line_wherever_it_is_read(tmp_path, text_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait, crème brûlée, façade.\n".encode("latin-1") * 20)
    message = f"data.path={latin1} is not UTF-8 text"
    code, _, err = run_cli(["train", *LLAMA, f"data.path={latin1}", f"hydra.run.dir={tmp_path / 'bad'}"], capsys)
    assert message in one_line(code, err)

    run = tmp_path / "run"
    code, _, err = run_cli(["train", *LLAMA, f"data.path={text_path}", "trainer.max_steps=2", "trainer.eval_grid=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval-grid", f"checkpoint={run}", f"data.path={latin1}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], capsys)
    assert message in one_line(code, err)
    code, _, err = run_cli(["train", f"resume={run}", f"+data.path={latin1}", f"hydra.run.dir={tmp_path / 'resume'}"], capsys)
    assert message in one_line(code, err)


@pytest.mark.parametrize("size", [0, 256])
def test_a_bpe_vocabulary_smaller_than_its_alphabet_is_refused(tmp_path, text_path, capsys, size):
    code, _, err = run_cli(["train", *LLAMA, f"data.path={text_path}", "data.tokenizer=bpe", f"data.vocab_size={size}", f"hydra.run.dir={tmp_path}"], capsys)
    assert f"data.vocab_size must be >= 257 for data.tokenizer=bpe, its 256 bytes and <|endoftext|> (got {size})" in one_line(code, err)
    assert not (tmp_path / "last.pt").exists()


def test_the_smallest_bpe_vocabulary_is_its_alphabet(text_path: Path):
    cfg = compose_config("train", [*LLAMA, f"data.path={text_path}", "data.tokenizer=bpe", "data.vocab_size=257"])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"), False)
    assert len(task.tokenizer) == 257
