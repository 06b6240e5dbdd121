"""Sorted Transformers on `transformers` models: sequence classifiers (encoders) and causal
language models (decoders) of every layout in hf_layouts.py.

The network is the library's own model (`self.hf`), built from a config or loaded with
`from_pretrained`; sortednet adds no layers. A sub-model is one stage of L layers: depth k runs
the first k layers, then the shared head (an encoder's classification head on the first token; a
decoder's final norm and LM head). Width keeps the first FFN units of every layer (the project's
round-half-up rule, at least 1) and, with `sort_heads` where the layout allows it, the first
attention heads (key/value heads in whole groups), as slices of the shared tensors; the hidden
size is never cut. What differs between architectures is asked of the layout (`self.layout`);
every call below the library's public API goes through hf_compat and hf_layouts.

The `transformers` imports are deferred to first use: importing them costs seconds, which the
CNN commands should not pay.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import UserError
from ..sorted.submodel import SubModel, scaled
from . import hf_compat
from .cost import TransformerShape
from .hf_layouts import DecoderLayout, EncoderLayout, LayerCut, layout_for, layout_kind


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
    """What one layer takes besides the hidden states (masks, position tables, relative
    positions: the layout's), the same for every layer of a pass."""

    hidden: torch.Tensor
    extras: dict = field(default_factory=dict)


def library_model(config, causal: bool) -> nn.Module:
    """A freshly initialised library model of `config`: a causal LM or a sequence classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    return auto.from_config(config)


class SortedTransformer(nn.Module):
    """What encoders and decoders share: one stage of layers, width as heads and FFN units, no
    norm statistics (LayerNorm and RMSNorm need no recalibration)."""

    causal = False
    arch_name = ""  # the arch["name"] a checkpoint records

    def __init__(self, hf_model: nn.Module, sort_heads: bool):
        super().__init__()
        self.hf = hf_model
        self.layout = layout_for(hf_model.config.model_type, self.causal)
        self.sort_heads = bool(sort_heads)
        self.checkpointing = False  # enable_gradient_checkpointing
        if self.sort_heads and not self.layout.heads_cuttable(hf_model):
            raise UserError(f"model.sort_heads=true: the {hf_model.config.model_type} layout cannot run fewer heads than its config "
                            "names; leave sort_heads false (width then cuts FFN units only)")
        self.arch = {"name": self.arch_name, "config": hf_model.config.to_dict(), "sort_heads": self.sort_heads}

    @property
    def config(self):
        return self.hf.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.layout.layers(self.hf)

    @property
    def depth_limits(self) -> tuple[int, ...]:
        return (len(self.layers),)

    @property
    def head_dim(self) -> int:
        return self.layout.head_dim(self.config)

    def units(self, width: float) -> dict:
        heads, kv_heads = self.layout.heads(self.config), self.layout.kv_heads(self.config)
        kept = scaled(heads, width) if self.sort_heads else heads
        group = heads // kv_heads
        kept = -(-kept // group) * group  # grouped key/value heads are kept in whole groups
        return {"heads": kept, "kv_heads": kept // group, "ffn": scaled(self.layout.ffn(self.config), width)}

    def unit_summary(self, width: float) -> str:
        units = self.units(width)
        return f"{units['heads']}h-{units['ffn']}ffn"

    def layer_cut(self, index: int, width: float) -> Optional[LayerCut]:
        """What a sub-model of `width` keeps of every layer; None: all of it."""
        units = self.units(width)
        if units["heads"] == self.layout.heads(self.config) and units["ffn"] == self.layout.ffn(self.config):
            return None
        return LayerCut(self.layout, self.config, units["heads"], units["kv_heads"], units["ffn"])

    def enable_gradient_checkpointing(self) -> None:
        """Each layer's activations recomputed in the backward instead of kept (trainer.
        gradient_checkpointing), where the library declares its model safe to recompute. The
        library's own switch checkpoints a layer's `forward` alone, which would replay it without
        the sub-model's slices (taken inside the layer call): here the whole sliced call is
        checkpointed, with the function the library uses (torch.utils.checkpoint, non-reentrant)."""
        if not self.hf.supports_gradient_checkpointing:
            raise UserError(f"trainer.gradient_checkpointing=true: transformers has no gradient checkpointing for {self.config.model_type}")
        self.checkpointing = True

    def checkpointed(self, call, hidden: torch.Tensor) -> torch.Tensor:
        """`call(hidden)`: one layer, recomputed in the backward with gradient checkpointing."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(call, hidden, use_reentrant=False)
        return call(hidden)

    def recalibrated_norms(self) -> list[nn.Module]:
        return []

    def shape(self) -> TransformerShape:
        """The full model's sizes for a memory estimate (exact parameter counts: works on a
        model built on the meta device, which allocates nothing)."""
        config = self.config
        return TransformerShape(
            parameters=sum(p.numel() for p in self.parameters()),
            layer_parameters=max(sum(p.numel() for p in layer.parameters()) for layer in self.layers),
            layers=len(self.layers), hidden=config.hidden_size, heads=self.layout.heads(config), kv_heads=self.layout.kv_heads(config),
            head_dim=self.head_dim, ffn=self.layout.ffn(config), gated_ffn=self.layout.gated_ffn,
            outputs=config.vocab_size if self.causal else config.num_labels, causal=self.causal,
        )

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

    def head_module(self) -> nn.Module:
        return nn.ModuleList(self.layout.head_modules(self.hf))

    def forward(self, inputs: TokenBatch, sub: Optional[SubModel] = None) -> torch.Tensor:
        width, depth = (1.0, len(self.layers)) if sub is None else (sub.width, sub.depth[0])
        state = self.run_stem(inputs, width)
        for index in range(depth):
            state = self.run_block(0, index, state, width)
        return self.run_head(state, width)

    def sub_config(self, sub: SubModel):
        """The library config of `sub` as a standalone model (every head: see zero_cut_heads)."""
        return self.layout.sub_config(self.config, sub.depth[0], self.units(sub.width)["ffn"])

    def sub_arch(self, sub: SubModel) -> dict:
        return {"name": self.arch_name, "config": self.sub_config(sub).to_dict(), "sort_heads": self.sort_heads}

    def extract(self, sub: SubModel) -> "SortedTransformer":
        """`sub` as a standalone library model of the same type holding copies of its tensors:
        the first k layers, each narrowed by the same slices the sorted forward uses."""
        small = type(self)(library_model(self.sub_config(sub), self.causal), self.sort_heads)
        small.to(next(self.parameters()).device)
        units = self.units(sub.width)
        full_heads = self.layout.heads(self.config)
        prefix = next(name for name, module in self.hf.named_modules() if module is self.layers) + "."
        narrowed = [self.layout.slices(self.layers[i], self.config, full_heads, self.layout.kv_heads(self.config), units["ffn"])
                    for i in range(sub.depth[0])]
        source = self.hf.state_dict()
        with torch.no_grad():
            for name, target in small.hf.state_dict().items():
                tensor = source[name]
                if name.startswith(prefix):
                    index, _, inner = name[len(prefix):].partition(".")
                    tensor = narrowed[int(index)].get(inner, tensor)
                target.copy_(tensor)
            self.zero_cut_heads(small, units["heads"])
        return small.eval()

    def zero_cut_heads(self, small: "SortedTransformer", heads: int) -> None:
        """The library's configs derive the head size from hidden / heads (and check it), so a
        sub-model with fewer heads cannot be written as a plain config: the standalone model
        keeps every head and zeroes the output-projection columns of the cut ones. That is the
        same function, exactly, but not smaller."""
        if heads < self.layout.heads(self.config):
            for layer in small.layers:
                self.layout.out_projection(layer)[:, heads * self.head_dim:] = 0

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
        return self.layout.max_input_length(self.config)

    # The prefix protocol (models/protocol.py): run_stem, run_block, run_head.
    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        raise NotImplementedError

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        raise NotImplementedError

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        raise NotImplementedError


class SortedEncoder(SortedTransformer):
    """A sequence classifier (or regressor): logits [batch, labels] from the first token."""

    arch_name = "encoder"
    layout: EncoderLayout

    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        hidden, extras = self.layout.stem(self.hf, inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
        return LayerInput(hidden, extras)

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        cut = self.layer_cut(index, width)
        hidden = self.checkpointed(lambda h: self.layout.run_layer(self.hf, index, h, state.extras, cut), state.hidden)
        return LayerInput(hidden, state.extras)

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        return self.layout.classify(self.hf, state.hidden)


class SortedDecoder(SortedTransformer):
    """A causal language model: every exit goes through the shared final norm and LM head. Its
    logits are [batch, seq, vocab]. The pieces the decoding engine runs one at a time (embed,
    positions and their slices, layer_mask, run_layer, logits) are methods here, asked of the layout."""

    causal = True
    arch_name = "decoder"
    layout: DecoderLayout

    def __init__(self, hf_model: nn.Module, sort_heads: bool):
        super().__init__(hf_model, sort_heads)
        self.windows = [self.layout.window(self.hf, index) for index in range(len(self.layers))]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.layout.embed(self.hf, ids, positions)

    def positions(self, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
        return self.layout.position_embeddings(self.hf, hidden, positions)

    @property
    def positions_sliceable(self) -> bool:
        """Whether `positions` of a..b-1 are rows a..b-1 of one table built for 0..n-1."""
        return self.layout.positions_sliceable(self.hf)

    def slice_positions(self, table: Any, start: int, count: int) -> Any:
        return self.layout.slice_positions(table, start, count)

    def layer_mask(self, index: int, padding: Optional[torch.Tensor], query_len: int, key_len: int, hidden: torch.Tensor):
        return hf_compat.additive_mask(padding, query_len, key_len, hidden.dtype, hidden.device, causal=True, window=self.windows[index])

    def run_layer(self, index: int, hidden: torch.Tensor, mask, position_embeddings, cache=None, cut: Optional[LayerCut] = None) -> torch.Tensor:
        return self.layout.run_layer(self.layers[index], hidden, mask, position_embeddings, cache, cut)

    @property
    def lean_decoding(self) -> bool:
        """Whether the layout has a lean decoding step for any of the layers (decode_step)."""
        return any(self.layout.lean_step(layer, self.config) is not None for layer in self.layers)

    def decode_step(self, index: int, lean: bool = True):
        """Layer `index` as decoding runs it, (hidden, mask, position embeddings, cache) -> hidden:
        the layout's lean step where it has one for this layer (the same output to the bit,
        without the library's per-call plumbing), otherwise -- or with `lean` false -- the
        library's own layer."""
        step = self.layout.lean_step(self.layers[index], self.config) if lean else None
        if step is not None:
            return step
        return lambda hidden, mask, position_embeddings, cache: self.run_layer(index, hidden, mask, position_embeddings, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layout.logits(self.hf, hidden)

    def run_stem(self, inputs: TokenBatch, width: float) -> LayerInput:
        batch, length = inputs.input_ids.shape
        positions = torch.arange(length, device=inputs.input_ids.device)[None].expand(batch, -1)
        hidden = self.embed(inputs.input_ids, positions)
        masks = {window: hf_compat.additive_mask(inputs.attention_mask, length, length, hidden.dtype, hidden.device, causal=True, window=window)
                 for window in set(self.windows)}
        return LayerInput(hidden, {"masks": masks, "positions": self.positions(hidden, positions)})

    def run_block(self, stage: int, index: int, state: LayerInput, width: float) -> LayerInput:
        extras = state.extras
        mask, cut = extras["masks"][self.windows[index]], self.layer_cut(index, width)
        hidden = self.checkpointed(lambda h: self.run_layer(index, h, mask, extras["positions"], cut=cut), state.hidden)
        return LayerInput(hidden, extras)

    def run_head(self, state: LayerInput, width: float) -> torch.Tensor:
        return self.logits(state.hidden)


def sorted_from_config(config, sort_heads: bool = False) -> SortedTransformer:
    """The sorted model around a freshly initialised library model of a library config (any
    supported model_type: a decoder or an encoder by its layout)."""
    causal = layout_kind(config.model_type)
    return (SortedDecoder if causal else SortedEncoder)(library_model(config, causal), sort_heads)


def rebuild(causal: bool):
    """A checkpoint's architecture (the library config as a dict) back into a sorted model."""

    def build(config: dict, sort_heads: bool = False) -> SortedTransformer:
        sorted_class = SortedDecoder if causal else SortedEncoder
        return sorted_class(library_model(hf_compat.config_from_dict(config), causal), sort_heads)

    return build


def check_pretrained(location: str, causal: bool):
    """The config at a hub id or local directory, checked to be a supported decoder or encoder."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={location}: not a model directory or hub id ({str(exc).splitlines()[0]})") from None
    try:
        layout_for(config.model_type, causal)
    except UserError as exc:
        raise UserError(f"model.pretrained={location}: {exc}") from None
    return config


def load_pretrained(location: str, causal: bool, **overrides) -> nn.Module:
    """A library model from a hub id or a local directory, checked to be a supported layout."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = check_pretrained(location, causal)
    for key, value in overrides.items():
        setattr(config, key, value)
    # A classifier head of another label count is replaced by a new one (fine-tuning), not refused.
    auto, options = (AutoModelForCausalLM, {}) if causal else (AutoModelForSequenceClassification, {"ignore_mismatched_sizes": True})
    try:
        return auto.from_pretrained(location, config=config, **options)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={location}: could not load its weights ({str(exc).splitlines()[0]})") from None
