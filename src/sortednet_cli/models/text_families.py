"""The `model=bert|roberta|llama` options: typed configs and builders of the sorted Transformers.

A text model's vocabulary (and a classifier's label count) belong to the task's tokenizer and
data, so the builders take them from the task (`build_model(cfg, task.model_fields())`). With
`model.pretrained` the sizes come from the pretrained config instead of these keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import UserError
from .registry import MODELS
from .transformer import FAMILIES, SortedTransformer, library_classes, load_pretrained


@dataclass
class EncoderConfig:
    name: str = "bert"
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    max_length: int = 128  # the longest input in tokens (longer ones are cut)
    dropout: float = 0.1
    sort_heads: bool = False  # width also keeps the first heads (else every head, FFN units only)
    pretrained: Optional[str] = None  # a hub id or a local directory: from_pretrained


@dataclass
class DecoderConfig:
    name: str = "llama"
    layers: int = 6
    hidden: int = 192
    heads: int = 6
    kv_heads: Optional[int] = None  # grouped key/value heads; null = one per head
    ffn: int = 512
    context: int = 128  # the longest sequence (max_position_embeddings)
    dropout: float = 0.0
    rope_theta: float = 10000.0
    sort_heads: bool = False
    pretrained: Optional[str] = None


def _check_sizes(cfg, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"model.{key} must be >= 1 (got {value})")
    if cfg.hidden % cfg.heads:
        raise UserError(f"model.hidden={cfg.hidden} must be a multiple of model.heads={cfg.heads}")


def _encoder_builder(family: str):
    def build(cfg, vocab_size: int, num_labels: int, pad_token_id: int, problem_type: str) -> SortedTransformer:
        extra = {"num_labels": num_labels, "problem_type": problem_type}
        if cfg.pretrained:
            hf = load_pretrained(family, cfg.pretrained, **extra)
            if hf.config.vocab_size < vocab_size:
                raise UserError(f"model.pretrained={cfg.pretrained}: its vocabulary ({hf.config.vocab_size}) is smaller than its tokenizer's ({vocab_size})")
        else:
            _check_sizes(cfg, ("layers", "hidden", "heads", "ffn", "max_length"))
            config_class, model_class, _ = library_classes(family)
            # RoBERTa numbers positions from pad_token_id + 1.
            positions = cfg.max_length + (pad_token_id + 1 if family == "roberta" else 0)
            config = config_class(
                vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                intermediate_size=cfg.ffn, max_position_embeddings=positions, hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.dropout, pad_token_id=pad_token_id, type_vocab_size=2 if family == "bert" else 1,
                **extra,
            )
            hf = model_class(config)
        return FAMILIES[family](hf, cfg.sort_heads)

    return build


for _family in ("bert", "roberta"):
    MODELS.register(_family, schema=EncoderConfig)(_encoder_builder(_family))


@MODELS.register("llama", schema=DecoderConfig)
def llama_from_config(cfg, vocab_size: int, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None) -> SortedTransformer:
    if cfg.pretrained:
        hf = load_pretrained("llama", cfg.pretrained)
        if hf.config.vocab_size < vocab_size:
            raise UserError(f"model.pretrained={cfg.pretrained}: its vocabulary ({hf.config.vocab_size}) is smaller than its tokenizer's ({vocab_size})")
    else:
        _check_sizes(cfg, ("layers", "hidden", "heads", "kv_heads", "ffn", "context"))
        kv_heads = cfg.kv_heads or cfg.heads
        if cfg.heads % kv_heads:
            raise UserError(f"model.heads={cfg.heads} must be a multiple of model.kv_heads={kv_heads}")
        config_class, model_class, _ = library_classes("llama")
        config = config_class(
            vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            num_key_value_heads=kv_heads, intermediate_size=cfg.ffn, max_position_embeddings=cfg.context,
            attention_dropout=cfg.dropout, rope_theta=cfg.rope_theta, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=None, tie_word_embeddings=False,
        )
        hf = model_class(config)
    return FAMILIES["llama"](hf, cfg.sort_heads)
