"""Offline tokenizers: special tokens, pair encodings, exact round trips, saving and state."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sortednet_cli.errors import UserError
from sortednet_cli.tasks.text.tokenizers import (
    END_OF_TEXT,
    build_char_tokenizer,
    tokenizer_from_state,
    tokenizer_kind,
    tokenizer_state,
    train_byte_bpe,
    train_wordpiece,
    unknown_characters,
)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"

WORDS = "the a film movie story charming bleak journey actors plot funny dull warm it 's n't is was , . !".split()
CORPUS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)) for i in range(400)]
SAMPLES = ["It 's a charming, often affecting journey.", "unflinchingly bleak and desperate", "Plot: dull!\n  Actors -- warm."]
EXACT = ["Hello  world\n\n  indented\tline", " leading space", "café naïve — “quotes” 😀", "trailing spaces   \n"]


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "wordpiece": train_wordpiece(CORPUS, 200),
        "roberta_bpe": train_byte_bpe(CORPUS, 400, roberta=True),
        "byte_bpe": train_byte_bpe(CORPUS, 400, roberta=False),
        "char": build_char_tokenizer("".join(SAMPLES) + "".join(CORPUS)),
    }


KINDS = ("wordpiece", "roberta_bpe", "byte_bpe", "char")


def test_wordpiece_wraps_texts_and_pairs_like_bert(tokenizers):
    tok = tokenizers["wordpiece"]
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.pad_token_id == 0 and tok.mask_token == "[MASK]" and tok.model_max_length == 512
    single = tok("The FILM")
    assert tok.convert_ids_to_tokens(single["input_ids"]) == ["[CLS]", "the", "film", "[SEP]"]  # lowercased
    pair = tok("the film", "a plot")
    assert tok.convert_ids_to_tokens(pair["input_ids"]) == ["[CLS]", "the", "film", "[SEP]", "a", "plot", "[SEP]"]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    batch = tok(["the", "the film is dull"], padding=True)
    assert batch["input_ids"][0][-3:] == [0, 0, 0] and batch["attention_mask"][0] == [1, 1, 1, 0, 0, 0]
    assert tok.decode(tok("the film is dull .")["input_ids"], skip_special_tokens=True) == "the film is dull."


def test_roberta_bpe_ids_and_pairs(tokenizers):
    tok = tokenizers["roberta_bpe"]
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    assert (tok.cls_token, tok.sep_token) == ("<s>", "</s>")
    a, b = tok("the film")["input_ids"], tok("a plot")["input_ids"]
    pair = tok("the film", "a plot")
    assert a[0] == 0 and a[-1] == 2
    assert pair["input_ids"] == a + [2] + b[1:]  # <s> A </s></s> B </s>
    assert "token_type_ids" not in pair
    assert tok(["the", "the film is dull"], padding=True)["input_ids"][0][-1] == 1
    for text in SAMPLES + EXACT:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_byte_bpe_for_language_models_adds_nothing_and_round_trips(tokenizers):
    tok = tokenizers["byte_bpe"]
    assert tok.convert_ids_to_tokens(0) == END_OF_TEXT and tok.eos_token_id == 0 and tok.pad_token is None
    assert tok.all_special_tokens == [END_OF_TEXT]
    assert tok("the film")["input_ids"] == tok.convert_tokens_to_ids(tok.tokenize("the film"))  # nothing added
    for text in SAMPLES + EXACT:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("the film is dull " * 500)["input_ids"]) > 512  # no length limit, no truncation


def test_char_tokenizer_ids_are_sorted_characters(tokenizers):
    text = "ROMEO:\n hi  there\n"
    tok = build_char_tokenizer(text)
    characters = sorted(set(text))
    assert tok.get_vocab() == {c: i for i, c in enumerate(characters)}
    ids = tok(text)["input_ids"]
    assert ids == [characters.index(c) for c in text]
    assert tok.decode(ids) == text
    for sample in SAMPLES:
        assert tokenizers["char"].decode(tokenizers["char"](sample)["input_ids"]) == sample


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="no shared tinyshakespeare copy")
def test_char_tokenizer_is_exact_on_shakespeare():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:10_000]
    tok = build_char_tokenizer(text)
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert unknown_characters(tok, text) == []


def test_unknown_characters_are_named():
    tok = build_char_tokenizer("abc \n")
    assert unknown_characters(tok, "a cab\n") == []
    assert unknown_characters(tok, "Zebra!\tz") == ["\t", "!", "Z", "e", "r", "z"]
    with pytest.raises(Exception):  # no unknown token: encoding cannot silently drop them
        tok("abZ")
    with pytest.raises(UserError, match="empty"):
        build_char_tokenizer("")


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_recognised(tokenizers, kind):
    assert tokenizer_kind(tokenizers[kind]) == kind


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_then_auto_tokenizer_gives_the_same_ids(tokenizers, kind, tmp_path):
    tok = tokenizers[kind]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES:
        assert loaded(text) == tok(text)
    assert loaded(SAMPLES[0], SAMPLES[1]) == tok(SAMPLES[0], SAMPLES[1])
    assert loaded.special_tokens_map == tok.special_tokens_map and loaded.model_max_length == tok.model_max_length


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trips_through_json_and_a_checkpoint(tokenizers, kind):
    tok = tokenizers[kind]
    state = tokenizer_state(tok)
    assert state["kind"] == kind
    buffer = io.BytesIO()
    torch.save({"tokenizer": json.loads(json.dumps(state))}, buffer)
    buffer.seek(0)
    rebuilt = tokenizer_from_state(torch.load(buffer, weights_only=True)["tokenizer"])
    for text in SAMPLES:
        assert rebuilt(text) == tok(text)
    assert rebuilt(SAMPLES[0], SAMPLES[1]) == tok(SAMPLES[0], SAMPLES[1])
    assert rebuilt.special_tokens_map == tok.special_tokens_map
    assert rebuilt.model_input_names == tok.model_input_names and rebuilt.model_max_length == tok.model_max_length
    assert tokenizer_state(rebuilt) == state


def test_trained_tokenizers_are_the_same_in_every_process(tmp_path):
    """Two runs with the same seed must get the same tokenizer (the library's WordPiece trainer
    breaks ties differently per process; ours and byte-level BPE do not)."""
    import subprocess
    import sys

    script = (
        "import sys, json\n"
        "from sortednet_cli.tasks.text.tokenizers import train_wordpiece, train_byte_bpe, tokenizer_state\n"
        "texts = ['the cat sat on the mat', 'a dog ran far', 'the cat ran', 'dogs and cats', 'mat sat far'] * 20\n"
        "print(json.dumps([tokenizer_state(train_wordpiece(texts, 120)), tokenizer_state(train_byte_bpe(texts, 300, roberta=True)),"
        " tokenizer_state(train_byte_bpe(texts, 300, roberta=False))]))\n"
    )
    outputs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert outputs[0] == outputs[1]
