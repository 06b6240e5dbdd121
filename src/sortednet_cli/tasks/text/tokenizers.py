"""Tokenizers trained offline on the task's own text, wrapped as transformers fast tokenizers.

No hub, no downloads: a tokenizer is trained with the `tokenizers` library in seconds and
wrapped in `PreTrainedTokenizerFast`, so `save_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` work as for a hub tokenizer, and `tokenizer_state` turns
it into plain JSON data that a torch checkpoint can carry.

Four kinds:
  wordpiece    BERT's: lowercasing, [CLS] A [SEP] B [SEP] with token type ids.
  roberta_bpe  RoBERTa's byte-level BPE: <s> A </s></s> B </s>, <pad> = 1.
  byte_bpe     GPT-2's byte-level BPE for a decoder LM: adds no tokens, decodes back exactly.
  char         nanoGPT's characters: ids in sorted character order, decodes back exactly.
Both byte-level kinds split without a prefix space, as RoBERTa's and GPT-2's tokenizers do, so
that decoding gives back the text exactly.
"""

from __future__ import annotations

import json
from collections import Counter

from typing import Callable, Iterable, Optional

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ...errors import UserError

ENCODER_MAX_LENGTH = 512  # BERT's and RoBERTa's position count; language models cut their own windows
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PAIR_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
INPUT_NAMES = ("input_ids", "attention_mask")


def _wrap(
    backend: Tokenizer, special_tokens: dict[str, str], input_names: Iterable[str], model_max_length: Optional[int] = None
) -> PreTrainedTokenizerFast:
    """Without a model_max_length the tokenizer has no length limit (and warns of none), as a
    language model's corpus is encoded whole. Decoding never "cleans up" spaces: that would
    break exact round trips."""
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        model_input_names=list(input_names),
        **special_tokens,
        **limit,
    )


def pretrained_tokenizer(location: str) -> PreTrainedTokenizerFast:
    """The tokenizer of a pretrained model (`model.pretrained`, whose type the task's text
    profile has already checked)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(location)
    if folder.is_dir() and not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")):
        raise UserError(f"model.pretrained={location} holds no tokenizer (no tokenizer.json or tokenizer_config.json): "
                        "save the model's tokenizer there with tokenizer.save_pretrained(dir)")
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={location}: no tokenizer there ({str(exc).splitlines()[0]})") from None


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """BERT's uncased WordPiece tokenizer over a vocabulary built deterministically from the
    texts: the special tokens, every character (as a word start and as a '##' continuation),
    then whole words by frequency (ties alphabetical) up to `vocab_size`; a word outside it
    falls back to its characters. The library's WordPieceTrainer breaks ties in a different
    order in every process, so two runs with the same seed would get different tokenizers."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({ch for word in counts for ch in word})
    vocab = specials + characters + [f"##{ch}" for ch in characters]
    known = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
    backend = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, backend.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )
    backend.decoder = decoders.WordPiece()
    special_tokens = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    return _wrap(backend, special_tokens, PAIR_INPUT_NAMES, ENCODER_MAX_LENGTH)


def train_byte_bpe(texts: Iterable[str], vocab_size: int, roberta: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE: RoBERTa's (special tokens around the texts) or, for a decoder language
    model, GPT-2's (only an end-of-text token, never added by encoding)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta else [END_OF_TEXT]  # ids in this order
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    if not roberta:
        special_tokens = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
        return _wrap(backend, special_tokens, INPUT_NAMES)
    backend.post_processor = processors.RobertaProcessing(
        sep=("</s>", backend.token_to_id("</s>")), cls_token=("<s>", backend.token_to_id("<s>")), add_prefix_space=False
    )
    special_tokens = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    return _wrap(backend, special_tokens, INPUT_NAMES, ENCODER_MAX_LENGTH)


def build_char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """One token per character, ids in sorted character order (nanoGPT's). It has no unknown
    token: encoding a character it lacks fails, so check `unknown_characters` first."""
    characters = sorted(set(text))
    if not characters:
        raise UserError("the text is empty: no characters to build a vocabulary from")
    backend = Tokenizer(models.WordLevel({character: index for index, character in enumerate(characters)}))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # each character alone, newlines too
    backend.decoder = decoders.Fuse()  # joined with nothing between
    return _wrap(backend, {}, INPUT_NAMES)


def unknown_characters(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """The characters of `text` a character tokenizer has no id for, sorted."""
    return sorted(set(text).difference(tokenizer.get_vocab()))


def tokenizer_kind(tokenizer: PreTrainedTokenizerFast) -> str:
    """wordpiece, roberta_bpe, byte_bpe or char: which builder made it; `other` for a pretrained
    model's own tokenizer of another kind (kept and restored all the same)."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer, which a checkpoint can keep; use a model that ships tokenizer.json")
    backend = tokenizer.backend_tokenizer
    if isinstance(backend.model, models.WordPiece):
        return "wordpiece"
    if isinstance(backend.model, models.WordLevel):
        return "char"
    if isinstance(backend.model, models.BPE):
        return "roberta_bpe" if isinstance(backend.post_processor, processors.RobertaProcessing) else "byte_bpe"
    return "other"


def _without_call_settings(tokenizer_json: str) -> str:
    """The backend remembers the truncation and padding of its last call; the state must not
    depend on which texts were encoded last."""
    data = json.loads(tokenizer_json)
    data["truncation"] = None
    data["padding"] = None
    return json.dumps(data, ensure_ascii=False)


def tokenizer_state(tokenizer: PreTrainedTokenizerFast) -> dict:
    """Plain JSON data that rebuilds the tokenizer (`tokenizer_from_state`): kept in checkpoints."""
    return {
        "kind": tokenizer_kind(tokenizer),
        "tokenizer_json": _without_call_settings(tokenizer.backend_tokenizer.to_str()),
        "special_tokens": {name: str(getattr(tokenizer, name)) for name in SPECIAL_TOKEN_ATTRIBUTES if getattr(tokenizer, name) is not None},
        "model_input_names": list(tokenizer.model_input_names),
        "model_max_length": tokenizer.model_max_length,
        **({"chat_template": tokenizer.chat_template} if getattr(tokenizer, "chat_template", None) else {}),
    }


def task_tokenizer(saved_state: Optional[dict], pretrained: Optional[str], scratch: Callable[[], PreTrainedTokenizerFast]) -> PreTrainedTokenizerFast:
    """The tokenizer a text task encodes with: the one its checkpoint saved (a resumed run, eval-grid,
    generate), else the pretrained model's, else `scratch()`, trained here on the task's text."""
    if saved_state is not None:
        return tokenizer_from_state(saved_state)
    if pretrained:
        return pretrained_tokenizer(pretrained)
    return scratch()


def tokenizer_from_state(state: dict) -> PreTrainedTokenizerFast:
    tokenizer = _wrap(
        Tokenizer.from_str(state["tokenizer_json"]), state["special_tokens"], state["model_input_names"], state["model_max_length"]
    )
    tokenizer.chat_template = state.get("chat_template")  # a pretrained model's own, kept for instruction data and generate
    return tokenizer
