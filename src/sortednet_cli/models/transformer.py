"""Sorted Transformers on `transformers` models: BERT / RoBERTa classifiers and a LLaMA decoder.

The network is the library's own model (`self.hf`), built from a config or loaded with
`from_pretrained`; sortednet adds no layers. A sub-model is one stage of L layers: depth k runs
the first k layers, then the shared head (BERT's pooler and classifier on the first token;
RoBERTa's classification head; LLaMA's final RMSNorm and LM head). Width keeps the first FFN
units of every layer (the project's round-half-up rule, at least 1) and, with `sort_heads`, the
first attention heads, as views of the shared tensors; the hidden size is never cut. Every call
below the library's public API goes through hf_compat.

The `transformers` imports are deferred to first use: importing them costs seconds, which the
CNN commands should not pay.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import UserError
from ..sorted.submodel import SubModel, scaled
from . import hf_compat
from .registry import ARCHITECTURES


@dataclass
class TokenBatch:
    """The inputs of the Transformer families: token ids [batch, seq], the padding mask (1 for
    real tokens) and, for sentence pairs, token type ids."""

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor] = None
    token_type_ids: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "TokenBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TokenBatch(move(self.input_ids), move(self.attention_mask), move(self.token_type_ids))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class LayerInput:
    """What one layer takes besides the hidden states; the same for every layer of a pass."""

    hidden: torch.Tensor
    mask: Optional[torch.Tensor]
    position_embeddings: Any = None


class SortedTransformer(nn.Module):
    """What the encoder and decoder families share: one stage of layers, width as heads and FFN
    units, no norm statistics (LayerNorm and RMSNorm need no recalibration)."""

    arch_name = ""

    def __init__(self, hf_model: nn.Module, sort_heads: bool):
        super().__init__()
        self.hf = hf_model
        self.sort_heads = bool(sort_heads)
        self.arch = {"name": self.arch_name, "config": hf_model.config.to_dict(), "sort_heads": self.sort_heads}

    @property
    def config(self):
        return self.hf.config

    @property
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def depth_limits(self) -> tuple[int, ...]:
        return (len(self.layers),)

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def units(self, width: float) -> dict:
        heads = self.config.num_attention_heads
        return {
            "heads": scaled(heads, width) if self.sort_heads else heads,
            "ffn": scaled(self.config.intermediate_size, width),
        }

    def unit_summary(self, width: float) -> str:
        units = self.units(width)
        return f"{units['heads']}h-{units['ffn']}ffn"

    def recalibrated_norms(self) -> list[nn.Module]:
        return []

    @contextlib.contextmanager
    def countable_attention(self) -> Iterator[None]:
        """Eager attention while FLOPs are counted: torch's FLOP counter does not see CPU
        scaled-dot-product attention, so counts would leave attention out."""
        previous = hf_compat.use_eager_attention(self.hf)
        try:
            yield
        finally:
            hf_compat.restore_attention(self.hf, previous)

    def block_module(self, stage: int, index: int) -> nn.Module:
        return self.layers[index]

    def forward(self, inputs: TokenBatch, sub: Optional[SubModel] = None) -> torch.Tensor:
        width, depth = (1.0, len(self.layers)) if sub is None else (sub.width, sub.depth[0])
        state = self.run_stem(inputs, width)
        for index in range(depth):
            state = self.run_block(0, index, state, width)
        return self.run_head(state, width)

    def sub_config(self, sub: SubModel):
        """The library config of `sub` as a standalone model."""
        config = copy.deepcopy(self.config)
        config.num_hidden_layers = sub.depth[0]
        config.intermediate_size = self.units(sub.width)["ffn"]
        return config

    def sub_arch(self, sub: SubModel) -> dict:
        return {"name": self.arch_name, "config": self.sub_config(sub).to_dict(), "sort_heads": self.sort_heads}

    def extract(self, sub: SubModel) -> "SortedTransformer":
        """`sub` as a standalone model of the same family holding copies of its slices."""
        small = build_from_parts(self.arch_name, self.sub_config(sub), self.sort_heads)
        small.to(next(self.parameters()).device)
        source = self.hf.state_dict()
        with torch.no_grad():
            # The small model's tensors are the leading slices of the same names (its layers
            # are the first k, its FFN the first units).
            for name, target in small.hf.state_dict().items():
                target.copy_(source[name][tuple(slice(0, n) for n in target.shape)])
            self.zero_cut_heads(small, self.units(sub.width)["heads"])
        return small.eval()

    def zero_cut_heads(self, small: "SortedTransformer", heads: int) -> None:
        """The library's configs derive the head size from hidden / heads (and check it), so a
        sub-model with fewer heads cannot be written as a plain config: the standalone model
        keeps every head and zeroes the output-projection columns of the cut ones. That is the
        same function, exactly, but not smaller."""
        raise NotImplementedError

    def export_hf(self, sub: SubModel, directory, tokenizer) -> "SortedTransformer":
        """`sub` as a standard Hugging Face model directory (config.json, safetensors, the
        tokenizer) that the library's Auto classes load with no sortednet code."""
        small = self.extract(sub)
        small.hf.save_pretrained(directory)
        tokenizer = copy.deepcopy(tokenizer)
        # Truncating to what the position embeddings hold keeps plain `tokenizer(text,
        # truncation=True)` calls from overrunning them.
        tokenizer.model_max_length = self.max_input_length
        tokenizer.save_pretrained(directory)
        return small

    @property
    def max_input_length(self) -> int:
        return self.config.max_position_embeddings

    # The prefix protocol (models/protocol.py): run_stem, run_block, run_head.
    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        raise NotImplementedError

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        raise NotImplementedError

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        raise NotImplementedError

    def head_module(self) -> nn.Module:
        raise NotImplementedError


class SortedEncoder(SortedTransformer):
    """BERT or RoBERTa for sequence classification."""

    @property
    def layers(self) -> nn.ModuleList:
        return hf_compat.encoder_layers(self.hf)

    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        hidden = hf_compat.encoder_embed(self.hf, inputs.input_ids, inputs.token_type_ids)
        length = inputs.input_ids.shape[1]
        mask = hf_compat.additive_mask(inputs.attention_mask, length, length, hidden.dtype, hidden.device, causal=False)
        return LayerInput(hidden, mask)

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        units = self.units(width)
        slices = hf_compat.encoder_slices(self.layers[index], units["heads"], self.head_dim, units["ffn"],
                                          self.config.num_attention_heads, self.config.intermediate_size)
        hidden = hf_compat.run_encoder_layer(self.layers[index], state.hidden, state.mask, slices)
        return LayerInput(hidden, state.mask)

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        return hf_compat.encoder_classify(self.hf, state.hidden)

    def head_module(self) -> nn.Module:
        return hf_compat.head_modules(self.hf)

    @property
    def max_input_length(self) -> int:
        # RoBERTa numbers positions from pad_token_id + 1.
        offset = self.config.pad_token_id + 1 if self.arch_name == "roberta" else 0
        return self.config.max_position_embeddings - offset

    def zero_cut_heads(self, small: SortedTransformer, heads: int) -> None:
        for layer in small.layers:
            hf_compat.zero_encoder_heads(layer, heads, self.head_dim)


class SortedDecoder(SortedTransformer):
    """A LLaMA-style causal language model: every exit goes through the shared final norm and
    LM head. Its logits are [batch, seq, vocab]."""

    arch_name = "llama"

    @property
    def layers(self) -> nn.ModuleList:
        return hf_compat.decoder_layers(self.hf)

    def units(self, width: float) -> dict:
        units = super().units(width)
        # Grouped key/value heads are kept in whole groups.
        group = self.config.num_attention_heads // self.config.num_key_value_heads
        units["heads"] = -(-units["heads"] // group) * group
        units["kv_heads"] = units["heads"] // group
        return units

    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        hidden = hf_compat.decoder_embed(self.hf, inputs.input_ids)
        batch, length = inputs.input_ids.shape
        positions = torch.arange(length, device=hidden.device)[None].expand(batch, -1)
        mask = hf_compat.additive_mask(inputs.attention_mask, length, length, hidden.dtype, hidden.device, causal=True)
        return LayerInput(hidden, mask, hf_compat.rotary(self.hf, hidden, positions))

    def layer_slices(self, index: int, width: float) -> dict:
        units = self.units(width)
        return hf_compat.decoder_slices(self.layers[index], units["heads"], units["kv_heads"], self.head_dim, units["ffn"],
                                        self.config.num_attention_heads, self.config.intermediate_size)

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        hidden = hf_compat.run_decoder_layer(self.layers[index], state.hidden, state.mask, state.position_embeddings,
                                             slices=self.layer_slices(index, width))
        return LayerInput(hidden, state.mask, state.position_embeddings)

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        return hf_compat.decoder_logits(self.hf, state.hidden)

    def head_module(self) -> nn.Module:
        return hf_compat.decoder_head_modules(self.hf)

    def zero_cut_heads(self, small: SortedTransformer, heads: int) -> None:
        for layer in small.layers:
            hf_compat.zero_decoder_heads(layer, heads, self.head_dim)


class SortedBert(SortedEncoder):
    arch_name = "bert"


class SortedRoberta(SortedEncoder):
    arch_name = "roberta"


FAMILIES = {"bert": SortedBert, "roberta": SortedRoberta, "llama": SortedDecoder}


def library_classes(family: str):
    """(config class, model class, Auto class) of a family, imported on first use."""
    import transformers

    return {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification, transformers.AutoModelForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification, transformers.AutoModelForSequenceClassification),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, transformers.AutoModelForCausalLM),
    }[family]


def build_from_parts(family: str, config, sort_heads: bool) -> SortedTransformer:
    """A family's sorted model around a freshly initialised library model of `config`."""
    _, model_class, _ = library_classes(family)
    return FAMILIES[family](model_class(config), sort_heads)


def _rebuild(family: str):
    def build(config: dict, sort_heads: bool = False) -> SortedTransformer:
        config_class, _, _ = library_classes(family)
        return build_from_parts(family, config_class.from_dict(config), sort_heads)

    return build


for _family in FAMILIES:
    ARCHITECTURES.register(_family)(_rebuild(_family))


def check_pretrained(family: str, location: str):
    """The config at a hub id or local directory, checked to be a `family` model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={location}: not a {family} model directory or hub id ({str(exc).splitlines()[0]})") from None
    config_class, _, _ = library_classes(family)
    if config.model_type != config_class.model_type:
        raise UserError(f"model.pretrained={location} holds a {config.model_type} model, not {family}")
    return config


def load_pretrained(family: str, location: str, **overrides) -> nn.Module:
    """A library model from a hub id or a local directory, checked to be of `family`."""
    config = check_pretrained(family, location)
    for key, value in overrides.items():
        setattr(config, key, value)
    _, model_class, _ = library_classes(family)
    # A classifier head of another label count is replaced by a new one (fine-tuning), not refused.
    mismatched = {"ignore_mismatched_sizes": True} if family != "llama" else {}
    try:
        return model_class.from_pretrained(location, config=config, **mismatched)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={location}: could not load its weights ({str(exc).splitlines()[0]})") from None
