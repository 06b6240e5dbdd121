"""The Transformer families: `model=encoder` (and its presets bert, roberta) and `model=decoder`
(and its preset llama), their typed configs and builders.

A family covers every supported `model_type` of its kind (hf_layouts.py): from a pretrained
directory or hub id (`model.pretrained`, the type read from its config.json) or from scratch
(`model.arch` with the size keys). A text model's vocabulary (and a classifier's label count)
belong to the task's tokenizer and data, so the builders take them from the task
(`build_model(cfg, task.model_fields())`); with `model.pretrained` the sizes come from the
pretrained config instead of these keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..errors import UserError
from .cost import TransformerShape
from .hf_layouts import EncoderLayout, layout_for
from .registry import ModelFamily, TextProfile, register_family
from .transformer import SortedDecoder, SortedEncoder, check_pretrained, library_model, load_pretrained, rebuild

# The architecture a preset builds from scratch when model.arch is not given.
PRESET_ARCHS = {"encoder": "bert", "bert": "bert", "roberta": "roberta", "decoder": "llama", "llama": "llama"}
# The size keys a model built from scratch takes from its config (each >= 1).
ENCODER_SIZES = ("layers", "hidden", "heads", "ffn", "max_length")
DECODER_SIZES = ("layers", "hidden", "heads", "kv_heads", "ffn", "context")


@dataclass
class EncoderConfig:
    name: str = "encoder"
    arch: Optional[str] = None  # model_type built from scratch (bert, roberta, xlm-roberta, electra, distilbert, deberta-v2); null: the preset's
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    max_length: int = 128  # the longest input in tokens (longer ones are cut)
    dropout: float = 0.1
    sort_heads: bool = False  # width also keeps the first heads (else every head, FFN units only)
    pretrained: Optional[str] = None  # a hub id or a local directory: from_pretrained weights and tokenizer (sizes then come from it)


@dataclass
class DecoderConfig:
    name: str = "decoder"
    arch: Optional[str] = None  # model_type built from scratch (llama, mistral, qwen2, qwen3, olmo2, gemma2, phi3, gpt2, gpt_neox); null: the preset's
    layers: int = 6
    hidden: int = 192
    heads: int = 6
    kv_heads: Optional[int] = None  # grouped key/value heads; null = one per head
    ffn: int = 512
    context: int = 128  # the longest sequence (max_position_embeddings)
    dropout: float = 0.0
    rope_theta: float = 10000.0  # rotary layouts
    sort_heads: bool = False  # width also keeps the first heads (else every head, FFN units only)
    pretrained: Optional[str] = None  # a hub id or a local directory: from_pretrained weights and tokenizer


def scratch_arch(cfg) -> str:
    return cfg.arch or PRESET_ARCHS[cfg.name]


def _check_sizes(cfg, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"model.{key} must be >= 1 (got {value})")
    if cfg.hidden % cfg.heads:
        raise UserError(f"model.hidden={cfg.hidden} must be a multiple of model.heads={cfg.heads}")


def _pretrained(cfg, causal: bool, vocab_size: int, **overrides) -> nn.Module:
    """The pretrained library model, checked against model.arch and the tokenizer's vocabulary."""
    hf = load_pretrained(cfg.pretrained, causal, **overrides)
    if cfg.arch and cfg.arch != hf.config.model_type:
        raise UserError(f"model.arch={cfg.arch}, but model.pretrained={cfg.pretrained} holds a {hf.config.model_type} model: drop model.arch")
    if hf.config.vocab_size < vocab_size:
        raise UserError(f"model.pretrained={cfg.pretrained}: its vocabulary ({hf.config.vocab_size}) is smaller than its tokenizer's ({vocab_size})")
    return hf


def _encoder_scratch_config(cfg, vocab_size: int, num_labels: int, pad_token_id: int, problem_type: str):
    _check_sizes(cfg, ENCODER_SIZES)
    arch = scratch_arch(cfg)
    sizes = {"vocab_size": vocab_size, "hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads, "ffn": cfg.ffn,
             "max_length": cfg.max_length, "dropout": cfg.dropout, "pad_token_id": pad_token_id, "num_labels": num_labels,
             "problem_type": problem_type}
    return layout_for(arch, causal=False).scratch_config(arch, sizes)


def _decoder_scratch_config(cfg, vocab_size: int, bos_token_id: Optional[int], eos_token_id: Optional[int]):
    _check_sizes(cfg, DECODER_SIZES)
    kv_heads = cfg.kv_heads or cfg.heads
    if cfg.heads % kv_heads:
        raise UserError(f"model.heads={cfg.heads} must be a multiple of model.kv_heads={kv_heads}")
    arch = scratch_arch(cfg)
    sizes = {"vocab_size": vocab_size, "hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads, "kv_heads": kv_heads,
             "ffn": cfg.ffn, "context": cfg.context, "dropout": cfg.dropout, "rope_theta": cfg.rope_theta,
             "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    return layout_for(arch, causal=True).scratch_config(arch, sizes)


def build_encoder(cfg, vocab_size: int, num_labels: int, pad_token_id: int, problem_type: str) -> SortedEncoder:
    if cfg.pretrained:
        hf = _pretrained(cfg, False, vocab_size, num_labels=num_labels, problem_type=problem_type)
    else:
        hf = library_model(_encoder_scratch_config(cfg, vocab_size, num_labels, pad_token_id, problem_type), causal=False)
    return SortedEncoder(hf, cfg.sort_heads)


def build_decoder(cfg, vocab_size: int, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None) -> SortedDecoder:
    if cfg.pretrained:
        hf = _pretrained(cfg, True, vocab_size)
    else:
        hf = library_model(_decoder_scratch_config(cfg, vocab_size, bos_token_id, eos_token_id), causal=True)
    return SortedDecoder(hf, cfg.sort_heads)


def _shape_on_meta(config, sorted_class) -> TransformerShape:
    """The sizes of the full model of a library config, the model built on the meta device:
    parameter counts exact for every layout, no memory allocated, no weights read."""
    import torch

    with torch.device("meta"):
        return sorted_class(library_model(config, sorted_class.causal), sort_heads=False).shape()


def encoder_memory_shape(cfg, vocab_size: int, num_labels: int, pad_token_id: int, problem_type: str) -> TransformerShape:
    """With model.pretrained, its config.json (the label count set as the build sets it)."""
    if cfg.pretrained:
        config = check_pretrained(cfg.pretrained, causal=False)
        config.num_labels, config.problem_type = num_labels, problem_type
    else:
        config = _encoder_scratch_config(cfg, vocab_size, num_labels, pad_token_id, problem_type)
    return _shape_on_meta(config, SortedEncoder)


def decoder_memory_shape(cfg, vocab_size: int, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None) -> TransformerShape:
    """With model.pretrained, its config.json alone (the vocabulary its embeddings hold)."""
    config = check_pretrained(cfg.pretrained, causal=True) if cfg.pretrained else _decoder_scratch_config(cfg, vocab_size, bos_token_id, eos_token_id)
    return _shape_on_meta(config, SortedDecoder)


def encoder_profile(cfg, read_pretrained: bool = True) -> TextProfile:
    """`read_pretrained=False`: a run restored from a checkpoint that predates saved profiles
    (its tokenizer is in the checkpoint; the pretrained directory may be gone)."""
    if cfg.pretrained and read_pretrained:
        config = check_pretrained(cfg.pretrained, causal=False)
        layout: EncoderLayout = layout_for(config.model_type, causal=False)
        return TextProfile(cfg.pretrained, layout.scratch_tokenizer, layout.token_types(config), min(cfg.max_length, layout.max_input_length(config)))
    layout = layout_for(scratch_arch(cfg), causal=False)
    _check_sizes(cfg, ENCODER_SIZES)  # the task checks its inputs against max_length: a bad one is named first
    return TextProfile(cfg.pretrained, layout.scratch_tokenizer, layout.scratch_token_types, cfg.max_length)


def decoder_profile(cfg, read_pretrained: bool = True) -> TextProfile:
    if cfg.pretrained:
        if not read_pretrained:
            return TextProfile(cfg.pretrained, "byte_bpe", False, None)
        config = check_pretrained(cfg.pretrained, causal=True)
        return TextProfile(cfg.pretrained, "byte_bpe", False, layout_for(config.model_type, causal=True).max_input_length(config))
    layout_for(scratch_arch(cfg), causal=True)
    _check_sizes(cfg, DECODER_SIZES)  # the task checks data.block_size against context: a bad one is named first
    return TextProfile(None, "byte_bpe", False, cfg.context)


def _text_bench():
    from ..tasks.text.bench import TextBench  # deferred: the bench imports the task layer

    return TextBench()


def _flop_context(model):
    return model.countable_attention()


def _checkpoint_layers(model):
    model.enable_gradient_checkpointing()


register_family(ModelFamily(
    "encoder", EncoderConfig, build_encoder, {"encoder": rebuild(causal=False), "bert": rebuild(causal=False), "roberta": rebuild(causal=False)},
    frozenset({"sequence_classification"}), aliases=("bert", "roberta"), hf_auto_class="AutoModelForSequenceClassification",
    gradient_checkpointing=_checkpoint_layers,
    text=encoder_profile, bench=_text_bench, flop_context=_flop_context, memory_shape=encoder_memory_shape,
))
register_family(ModelFamily(
    "decoder", DecoderConfig, build_decoder, {"decoder": rebuild(causal=True), "llama": rebuild(causal=True)},
    frozenset({"language_modeling"}), aliases=("llama",), hf_auto_class="AutoModelForCausalLM", decodes=True, text=decoder_profile,
    gradient_checkpointing=_checkpoint_layers,
    bench_hint="bench measures training and the grid of classifiers; for a decoder use sortednet bench-decode checkpoint=<run>",
    flop_context=_flop_context, memory_shape=decoder_memory_shape,
))
