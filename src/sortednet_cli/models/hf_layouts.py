"""One adapter per layer layout of the `transformers` library (not per model name).

A layout is what a family of `model_type`s shares below the library's public API: where the
layers, embeddings, final norm and head live, how a layer is called (which keyword takes the KV
cache, what else every layer needs: rotary tables, masks, relative positions), and which rows and
columns of which tensors hold the heads and FFN units. The sorted models (transformer.py) ask the
layout and never the model type. Together with hf_compat.py this is the compatibility layer;
tests/test_hf_compat.py pins every layout against the library's own forward.

Adding an architecture: a layout here (or a model type added to an existing one), listed in
LAYOUTS; see docs/architecture.md, "how to add an architecture".
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import UserError
from . import hf_compat

Slices = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LayerCut:
    """What a sub-model keeps of one layer: its first `heads` query heads (`kv_heads` key/value
    heads) and `ffn` FFN units. Called on the layer, it gives the layout's slices of the layer's
    tensors; the layer call takes them inside the call (hf_compat.call_layer)."""

    layout: "Layout"
    config: Any
    heads: int
    kv_heads: int
    ffn: int

    def __call__(self, layer: nn.Module) -> Slices:
        return self.layout.slices(layer, self.config, self.heads, self.kv_heads, self.ffn)


def _rows(weight: torch.Tensor, *spans: tuple[int, int]) -> torch.Tensor:
    """Rows [a, b) of each span, in order: a fused projection's kept parts (a view when one span)."""
    parts = [weight[a:b] for a, b in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _plain_rotary(rotary: nn.Module) -> bool:
    """Rotary tables whose frequencies do not depend on the longest position in the call:
    every rope type but the dynamic ones and longrope (which rescale by that length)."""
    rope_type = getattr(rotary, "rope_type", "default")
    return isinstance(rope_type, str) and "dynamic" not in rope_type and rope_type != "longrope"


class Layout:
    """What every layout declares. Sizes are read through the library config's own attribute
    names (its attribute_map makes num_hidden_layers, hidden_size and num_attention_heads work
    for GPT-2 and DistilBERT too); the FFN size key is the layout's."""

    model_types: tuple[str, ...] = ()
    causal = False
    auto_class = ""  # the transformers Auto class that loads an exported directory
    layers_path = ""  # dotted path from the library model to its ModuleList of layers
    ffn_key = "intermediate_size"
    gated_ffn = False  # the FFN multiplies an activated gate with an up projection (two FFN-wide outputs)

    def layers(self, hf: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.layers_path)(hf)

    def ffn(self, config) -> int:
        return getattr(config, self.ffn_key)

    def heads(self, config) -> int:
        return config.num_attention_heads

    def kv_heads(self, config) -> int:
        return getattr(config, "num_key_value_heads", None) or self.heads(config)

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def heads_cuttable(self, hf: nn.Module) -> bool:
        """Whether the layer modules accept fewer heads than the config names (they reshape
        with -1 heads and nothing normalises over all heads at once)."""
        return False

    def sub_config(self, config, layers: int, ffn: int):
        """The library config of the first `layers` layers with `ffn` FFN units each."""
        config = copy.deepcopy(config)
        config.num_hidden_layers = layers
        setattr(config, self.ffn_key, ffn)
        if getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types[:layers])
        return config

    def slices(self, layer: nn.Module, config, heads: int, kv_heads: int, ffn: int) -> Slices:
        """Tensors of a layer narrowed to the first `heads` query heads (`kv_heads` key/value
        heads: whole groups) and `ffn` FFN units, by parameter name inside the layer."""
        raise NotImplementedError

    def out_projection(self, layer: nn.Module) -> torch.Tensor:
        """The weight whose input columns are the heads' outputs ([out, heads * head_dim])."""
        raise NotImplementedError

    def head_modules(self, hf: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def max_input_length(self, config) -> int:
        return config.max_position_embeddings


# --- decoders --------------------------------------------------------------------------------------


class DecoderLayout(Layout):
    causal = True
    auto_class = "AutoModelForCausalLM"
    cache_keyword = "cache"

    def embed(self, hf: nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def position_embeddings(self, hf: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
        """What every layer takes for the positions (rotary cos/sin); None for learned positions."""
        return None

    def window(self, hf: nn.Module, index: int) -> Optional[int]:
        """Layer `index`'s sliding attention window, None for full attention."""
        return None

    def positions_sliceable(self, hf: nn.Module) -> bool:
        """Whether the position embeddings of positions a..b-1 equal rows a..b-1 of one table for
        positions 0..n-1 (decoding then builds one table per generation and slices it)."""
        return True

    def slice_positions(self, table: Any, start: int, count: int) -> Any:
        """Positions start..start+count-1 of a table from `position_embeddings` (cos and sin
        [batch, positions, dim]), as views; None stays None."""
        return None if table is None else tuple(part[:, start:start + count] for part in table)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                  cache: Optional[hf_compat.LayerCache] = None, cut: Optional[LayerCut] = None) -> torch.Tensor:
        extra = {} if position_embeddings is None else {"position_embeddings": position_embeddings}
        return hf_compat.call_layer(layer, cut, hidden, attention_mask=mask, **{self.cache_keyword: cache}, **extra)

    def lean_step(self, layer: nn.Module, config) -> Optional[LeanStep]:
        """The layer's eval-mode, full-width arithmetic written out op for op, without the module
        calls and keyword plumbing around it (at batch 1 and a small hidden size most of a
        library layer call is that plumbing, not arithmetic), or None where this layout has no
        such step for the layer. A step returns what `run_layer` returns, to the bit
        (tests/test_hf_compat.py pins it); decoding uses it (decode/engine.py)."""
        return None

    def logits(self, hf: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The shared final norm and LM head: what turns any exit's state into next-token logits."""
        raise NotImplementedError

    def scratch_config(self, model_type: str, sizes: dict):
        """A library config for a model trained from scratch (`model.arch`, the size keys)."""
        raise NotImplementedError


LeanStep = Callable[[torch.Tensor, Optional[torch.Tensor], Any, "hf_compat.LayerCache"], torch.Tensor]
"""(hidden, mask, position embeddings, cache) -> the layer's output: one layer as decoding runs it."""


def _rms_norm(weight: torch.Tensor, epsilon: float, hidden: torch.Tensor, cast_last: bool = False) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic in its order: float32 inside, the weight applied after the cast
    back; with `cast_last`, OLMo2's: the weight applied in float32, then the cast (the casts are
    no-ops in float32, so they are skipped there)."""
    dtype = hidden.dtype
    if dtype != torch.float32:
        hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + epsilon)
    if dtype == torch.float32:
        return weight * hidden
    return (weight * hidden).to(dtype) if cast_last else weight * hidden.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as the library applies it (rotate_half: the halves swapped, the first
    negated) to the first cos.shape[-1] dims of each head, the rest passed through (partial
    rotary, Phi-3's)."""
    dim = cos.shape[-1]
    rotated = x if dim == x.shape[-1] else x[..., :dim]
    half = dim // 2
    rotated = rotated * cos + torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1) * sin
    return rotated if dim == x.shape[-1] else torch.cat([rotated, x[..., dim:]], dim=-1)


def _weights(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A linear module's (weight, bias), the arguments of F.linear."""
    return module.weight, module.bias


def _layer_norm_arguments(module: nn.Module) -> tuple:
    """A LayerNorm's (normalized_shape, weight, bias, eps), the arguments of F.layer_norm after the input."""
    return module.normalized_shape, module.weight, module.bias, module.eps


class _LeanStep:
    """What every lean step shares: the layer, the library's call of it (run in training mode,
    whose dropout only the library's forward has) and the library's attention function. A step
    holds the layer's parameters (the same Parameter objects, so in-place updates and dtype or
    device moves show through; a parameter reassigned afterwards would not), read once at
    construction because a module attribute lookup costs about what a small tensor op does;
    `forward` is the layer's eval-mode forward inlined."""

    def __init__(self, layer: nn.Module, library: LeanStep, attend: Callable):
        self.layer, self.library, self.attend = layer, library, attend

    def __call__(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                 cache: "hf_compat.LayerCache") -> torch.Tensor:
        if self.layer.training:
            return self.library(hidden, mask, position_embeddings, cache)
        return self.forward(hidden, mask, position_embeddings, cache)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                cache: "hf_compat.LayerCache") -> torch.Tensor:
        raise NotImplementedError


class _RotaryStep(_LeanStep):
    """A layer of RotaryDecoder's LlamaDecoderLayer family in eval mode, its forward and its
    modules' forwards inlined: pre-norm attention and gated MLP (LLaMA, Mistral, Qwen2), q/k norms
    on each head (Qwen3) or on the whole projection with the norms after attention and MLP
    instead of before (OLMo2), fused qkv and gate_up projections with partial rotary (Phi-3)."""

    def __init__(self, layer: nn.Module, library: LeanStep, attend: Callable, cast_last: bool):
        attention, mlp = layer.self_attn, layer.mlp
        super().__init__(layer, library, attend)
        self.head_dim, self.index, self.cast_last = attention.head_dim, attention.layer_idx, cast_last
        norm = lambda module: (module.weight, module.variance_epsilon)  # noqa: E731
        self.o, self.down = _weights(attention.o_proj), _weights(mlp.down_proj)
        if hasattr(attention, "qkv_proj"):  # Phi-3: [q; k; v] rows of one projection
            self.qkv = _weights(attention.qkv_proj)
            queries = attention.config.num_attention_heads * self.head_dim
            self.qkv_split = (queries, queries + attention.num_key_value_heads * self.head_dim)
        else:
            self.qkv = None
            self.q, self.k, self.v = (_weights(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj"))
        q_norm = getattr(attention, "q_norm", None)
        self.qk_norms = None if q_norm is None else (norm(q_norm), norm(attention.k_norm))
        self.qk_norms_per_head = q_norm is not None and q_norm.weight.numel() == self.head_dim  # Qwen3; OLMo2's span all heads
        if hasattr(mlp, "gate_up_proj"):  # Phi-3: [gate; up] rows of one projection
            self.gate_up, self.act = _weights(mlp.gate_up_proj), mlp.activation_fn
        else:
            self.gate_up, self.act = None, mlp.act_fn
            self.gate, self.up = _weights(mlp.gate_proj), _weights(mlp.up_proj)
        self.norms_after = not hasattr(layer, "input_layernorm")  # OLMo2: post-attention and post-feedforward norms
        if self.norms_after:
            self.after_attention, self.after_mlp = norm(layer.post_attention_layernorm), norm(layer.post_feedforward_layernorm)
        else:
            self.input_norm, self.post_norm = norm(layer.input_layernorm), norm(layer.post_attention_layernorm)

    def _project(self, x: torch.Tensor, heads_shape: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [*positions, heads, head_dim], q/k-normed where the layer norms them."""
        linear = torch.nn.functional.linear
        if self.qkv is not None:
            qkv = linear(x, *self.qkv)
            first, second = self.qkv_split
            return qkv[..., :first].view(heads_shape), qkv[..., first:second].view(heads_shape), qkv[..., second:].view(heads_shape)
        query, keys, values = linear(x, *self.q), linear(x, *self.k), linear(x, *self.v).view(heads_shape)
        if self.qk_norms is not None and not self.qk_norms_per_head:
            query = _rms_norm(*self.qk_norms[0], query, self.cast_last)
            keys = _rms_norm(*self.qk_norms[1], keys, self.cast_last)
        query, keys = query.view(heads_shape), keys.view(heads_shape)
        if self.qk_norms_per_head:
            query, keys = _rms_norm(*self.qk_norms[0], query), _rms_norm(*self.qk_norms[1], keys)
        return query, keys, values

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        linear = torch.nn.functional.linear
        if self.gate_up is not None:
            gate, up = linear(x, *self.gate_up).chunk(2, dim=-1)
            return linear(up * self.act(gate), *self.down)
        return linear(self.act(linear(x, *self.gate)) * linear(x, *self.up), *self.down)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                cache: "hf_compat.LayerCache") -> torch.Tensor:
        positions = hidden.shape[:-1]
        x = hidden if self.norms_after else _rms_norm(*self.input_norm, hidden)
        query, keys, values = self._project(x, (*positions, -1, self.head_dim))
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        dtype = query.dtype
        query, keys = _rotate(query.transpose(1, 2), cos, sin), _rotate(keys.transpose(1, 2), cos, sin)
        if query.dtype != dtype:  # OLMo2's rotary tables are float32; its rotation casts back
            query, keys = query.to(dtype), keys.to(dtype)
        keys, values = cache.update(keys, values.transpose(1, 2), self.index)
        attended = torch.nn.functional.linear(self.attend(query, keys, values, mask).reshape(*positions, -1), *self.o)
        if self.norms_after:
            hidden = hidden + _rms_norm(*self.after_attention, attended, self.cast_last)
            return hidden + _rms_norm(*self.after_mlp, self._mlp(hidden), self.cast_last)
        hidden = hidden + attended
        return hidden + self._mlp(_rms_norm(*self.post_norm, hidden))


def _conv1d(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, width: int) -> torch.Tensor:
    """GPT-2's Conv1D (an [in, out] weight) as the library computes it: one addmm over the flattened positions."""
    return torch.addmm(bias, x.view(-1, x.shape[-1]), weight).view(*x.shape[:-1], width)


class _GPT2Step(_LeanStep):
    """A GPT2Block in eval mode (pre-LayerNorm attention and MLP, fused q/k/v), its forward and
    its modules' forwards inlined."""

    def __init__(self, layer: nn.Module, library: LeanStep, attend: Callable):
        attention, mlp = layer.attn, layer.mlp
        super().__init__(layer, library, attend)
        self.act = mlp.act
        self.head_dim, self.split, self.index = attention.head_dim, attention.split_size, attention.layer_idx
        conv = lambda module: (module.bias, module.weight, module.weight.shape[1])  # noqa: E731
        self.c_attn, self.c_proj, self.c_fc, self.mlp_proj = (conv(m) for m in (attention.c_attn, attention.c_proj, mlp.c_fc, mlp.c_proj))
        self.ln_1, self.ln_2 = _layer_norm_arguments(layer.ln_1), _layer_norm_arguments(layer.ln_2)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                cache: "hf_compat.LayerCache") -> torch.Tensor:
        layer_norm = torch.nn.functional.layer_norm
        query, keys, values = _conv1d(layer_norm(hidden, *self.ln_1), *self.c_attn).split(self.split, dim=2)
        heads_shape = (*keys.shape[:-1], -1, self.head_dim)
        keys, values = cache.update(keys.view(heads_shape).transpose(1, 2), values.view(heads_shape).transpose(1, 2), self.index)
        attended = self.attend(query.view(heads_shape).transpose(1, 2), keys, values, mask)
        hidden = _conv1d(attended.reshape(*attended.shape[:-2], -1).contiguous(), *self.c_proj) + hidden
        return hidden + _conv1d(self.act(_conv1d(layer_norm(hidden, *self.ln_2), *self.c_fc)), *self.mlp_proj)


class _NeoXStep(_LeanStep):
    """A GPTNeoXLayer in eval mode (q, k, v fused per head, partial rotary, the parallel residual
    or the sequential one), its forward and its modules' forwards inlined."""

    def __init__(self, layer: nn.Module, library: LeanStep, attend: Callable):
        attention, mlp = layer.attention, layer.mlp
        super().__init__(layer, library, attend)
        self.act = mlp.act
        self.head_size, self.index, self.parallel = attention.head_size, attention.layer_idx, layer.use_parallel_residual
        self.qkv, self.dense = _weights(attention.query_key_value), _weights(attention.dense)
        self.up, self.down = _weights(mlp.dense_h_to_4h), _weights(mlp.dense_4h_to_h)
        self.input_norm, self.post_norm = _layer_norm_arguments(layer.input_layernorm), _layer_norm_arguments(layer.post_attention_layernorm)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                cache: "hf_compat.LayerCache") -> torch.Tensor:
        linear, layer_norm = torch.nn.functional.linear, torch.nn.functional.layer_norm
        positions = hidden.shape[:-1]
        qkv = linear(layer_norm(hidden, *self.input_norm), *self.qkv).view(*positions, -1, 3 * self.head_size).transpose(1, 2)
        query, keys, values = qkv.chunk(3, dim=-1)
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keys, values = cache.update(_rotate(keys, cos, sin), values, self.index)
        attended = self.attend(_rotate(query, cos, sin), keys, values, mask)
        attended = linear(attended.reshape(*positions, -1).contiguous(), *self.dense)
        mlp = lambda x: linear(self.act(linear(layer_norm(x, *self.post_norm), *self.up)), *self.down)  # noqa: E731
        if self.parallel:
            return mlp(hidden) + attended + hidden
        attended = attended + hidden
        return mlp(attended) + attended


def _gemma_norm(weight: torch.Tensor, epsilon: float, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm in its order: float32 throughout, the weight applied as 1 + weight, then the cast back."""
    x = hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon)
    return (x * (1.0 + weight.float())).type_as(hidden)


class _Gemma2Step(_LeanStep):
    """A Gemma2DecoderLayer in eval mode (norms before and after attention and MLP, Gemma's
    RMSNorm, attention logits soft-capped inside the library's eager attention), its forward and
    its modules' forwards inlined."""

    def __init__(self, layer: nn.Module, library: LeanStep, attend: Callable):
        attention, mlp = layer.self_attn, layer.mlp
        super().__init__(layer, library, attend)
        self.act = mlp.act_fn
        self.head_dim, self.index = attention.head_dim, attention.layer_idx
        self.q, self.k, self.v, self.o = (_weights(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate, self.up, self.down = (_weights(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        norm = lambda name: (getattr(layer, name).weight, getattr(layer, name).eps)  # noqa: E731
        self.norms = [norm(name) for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                              "post_feedforward_layernorm")]

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                cache: "hf_compat.LayerCache") -> torch.Tensor:
        linear = torch.nn.functional.linear
        positions = hidden.shape[:-1]
        heads_shape = (*positions, -1, self.head_dim)
        before_attention, after_attention, before_mlp, after_mlp = self.norms
        x = _gemma_norm(*before_attention, hidden)
        query, keys, values = (linear(x, *p).view(heads_shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keys, values = cache.update(_rotate(keys, cos, sin), values, self.index)
        attended = linear(self.attend(_rotate(query, cos, sin), keys, values, mask).reshape(*positions, -1).contiguous(), *self.o)
        hidden = hidden + _gemma_norm(*after_attention, attended)
        x = _gemma_norm(*before_mlp, hidden)
        return hidden + _gemma_norm(*after_mlp, linear(self.act(linear(x, *self.gate)) * linear(x, *self.up), *self.down))


class RotaryDecoder(DecoderLayout):
    """LLaMA's layout and its relatives: model.layers of (self_attn, mlp), rotary tables from
    model.rotary_emb, final model.norm and lm_head. Quirks handled here: Qwen2's q/k/v biases,
    Qwen3's and OLMo2's q/k norms (OLMo2's span all heads, so its heads are not cut), Phi-3's
    fused qkv_proj and gate_up_proj (its attention splits qkv by the config's head count, so its
    heads are not cut), Mistral's, Qwen's and Gemma 2's sliding windows, Gemma's scaled
    embeddings (inside its embedding module) and final logit soft-capping, grouped key/value
    heads (cut in whole groups)."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "gemma2", "phi3")
    layers_path = "model.layers"
    gated_ffn = True  # gate_proj and up_proj (Phi-3: fused as gate_up_proj)
    # The types _RotaryStep's inlined forward covers (Gemma 2 has a step of its own).
    lean_model_types = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3")

    def heads_cuttable(self, hf: nn.Module) -> bool:
        attention = self.layers(hf)[0].self_attn
        if hasattr(attention, "qkv_proj"):
            return False
        q_norm = getattr(attention, "q_norm", None)
        return q_norm is None or q_norm.weight.numel() == self.head_dim(hf.config)

    def embed(self, hf, ids, positions):
        return hf.model.embed_tokens(ids)

    def position_embeddings(self, hf, hidden, positions):
        return hf.model.rotary_emb(hidden, position_ids=positions)

    def positions_sliceable(self, hf):
        return _plain_rotary(hf.model.rotary_emb)

    def window(self, hf, index):
        attention = self.layers(hf)[index].self_attn
        if hasattr(attention, "sliding_window"):  # per layer (Qwen2, Qwen3, Gemma 2: layer_types)
            return attention.sliding_window
        return getattr(hf.config, "sliding_window", None)  # every layer (Mistral, Phi-3)

    def lean_step(self, layer, config):
        library = lambda *args: self.run_layer(layer, *args)  # noqa: E731
        if config.model_type == "gemma2":
            attend = hf_compat.library_attention(layer.self_attn, config._attn_implementation, softcap=layer.self_attn.attn_logit_softcapping)
            return None if attend is None else _Gemma2Step(layer, library, attend)
        attend = hf_compat.library_attention(layer.self_attn, config._attn_implementation)
        if config.model_type not in self.lean_model_types or attend is None:
            return None
        return _RotaryStep(layer, library, attend, cast_last=config.model_type == "olmo2")

    def logits(self, hf, hidden):
        logits = hf.lm_head(hf.model.norm(hidden))
        cap = getattr(hf.config, "final_logit_softcapping", None)
        return logits if not cap else torch.tanh(logits / cap) * cap

    def head_modules(self, hf):
        return [hf.model.norm, hf.lm_head]

    def slices(self, layer, config, heads, kv_heads, ffn):
        slices: Slices = {}
        attention, mlp = layer.self_attn, layer.mlp
        head_dim, full_ffn = self.head_dim(config), self.ffn(config)
        if heads < self.heads(config):
            for name, count in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
                proj = getattr(attention, name)
                slices[f"self_attn.{name}.weight"] = proj.weight[: count * head_dim]
                if proj.bias is not None:
                    slices[f"self_attn.{name}.bias"] = proj.bias[: count * head_dim]
            slices["self_attn.o_proj.weight"] = attention.o_proj.weight[:, : heads * head_dim]
        if ffn < full_ffn:
            if hasattr(mlp, "gate_up_proj"):  # Phi-3: [gate; up] in one projection
                slices["mlp.gate_up_proj.weight"] = _rows(mlp.gate_up_proj.weight, (0, ffn), (full_ffn, full_ffn + ffn))
            else:
                for name in ("gate_proj", "up_proj"):
                    proj = getattr(mlp, name)
                    slices[f"mlp.{name}.weight"] = proj.weight[:ffn]
                    if proj.bias is not None:
                        slices[f"mlp.{name}.bias"] = proj.bias[:ffn]
            slices["mlp.down_proj.weight"] = mlp.down_proj.weight[:, :ffn]
        return slices

    def out_projection(self, layer):
        return layer.self_attn.o_proj.weight

    def scratch_config(self, model_type, sizes):
        from transformers import AutoConfig

        return AutoConfig.for_model(
            model_type, vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
            num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"], head_dim=sizes["hidden"] // sizes["heads"],
            intermediate_size=sizes["ffn"], max_position_embeddings=sizes["context"], attention_dropout=sizes["dropout"],
            rope_theta=sizes["rope_theta"], bos_token_id=sizes["bos_token_id"], eos_token_id=sizes["eos_token_id"],
            pad_token_id=None, tie_word_embeddings=False,
        )


class GPT2Decoder(DecoderLayout):
    """GPT-2: learned positions added to the token embeddings, Conv1D projections ([in, out]
    weights) with q, k, v fused and split by the full width (so its heads are not cut), final
    ln_f, LM head tied to the token embeddings."""

    model_types = ("gpt2",)
    layers_path = "transformer.h"
    ffn_key = "n_inner"

    def ffn(self, config):
        return config.n_inner or 4 * config.n_embd

    def embed(self, hf, ids, positions):
        return hf.transformer.drop(hf.transformer.wte(ids) + hf.transformer.wpe(positions))

    def run_layer(self, layer, hidden, mask, position_embeddings, cache=None, cut=None):
        if cut is None or cut.ffn >= self.ffn(cut.config):
            return super().run_layer(layer, hidden, mask, position_embeddings, cache, cut)
        # Conv1D shapes its output by its `nf` attribute, not by its weight: narrowed for this call.
        c_fc = layer.mlp.c_fc
        full, c_fc.nf = c_fc.nf, cut.ffn
        try:
            return super().run_layer(layer, hidden, mask, position_embeddings, cache, cut)
        finally:
            c_fc.nf = full

    def lean_step(self, layer, config):
        # Eager attention with reorder_and_upcast_attn takes another path inside the library's attention.
        eager_reordered = config._attn_implementation == "eager" and config.reorder_and_upcast_attn
        attend = hf_compat.library_attention(layer.attn, config._attn_implementation)
        if attend is None or eager_reordered or getattr(layer, "crossattention", None) is not None:
            return None
        return _GPT2Step(layer, lambda *args: self.run_layer(layer, *args), attend)

    def logits(self, hf, hidden):
        return hf.lm_head(hf.transformer.ln_f(hidden))

    def head_modules(self, hf):
        return [hf.transformer.ln_f, hf.lm_head]

    def slices(self, layer, config, heads, kv_heads, ffn):
        if ffn >= self.ffn(config):
            return {}
        mlp = layer.mlp
        return {"mlp.c_fc.weight": mlp.c_fc.weight[:, :ffn], "mlp.c_fc.bias": mlp.c_fc.bias[:ffn],
                "mlp.c_proj.weight": mlp.c_proj.weight[:ffn]}

    def scratch_config(self, model_type, sizes):
        from transformers import GPT2Config

        if sizes["kv_heads"] != sizes["heads"]:
            raise UserError("model.kv_heads: GPT-2 has no grouped key/value heads (leave it null)")
        dropout = sizes["dropout"]
        return GPT2Config(vocab_size=sizes["vocab_size"], n_embd=sizes["hidden"], n_layer=sizes["layers"], n_head=sizes["heads"],
                          n_inner=sizes["ffn"], n_positions=sizes["context"], resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                          bos_token_id=sizes["bos_token_id"], eos_token_id=sizes["eos_token_id"])


class NeoXDecoder(DecoderLayout):
    """GPT-NeoX (Pythia): q, k, v fused per head ([heads, 3, head_dim] rows, so the first heads
    are the first rows), partial rotary (rotary_pct), the parallel residual inside its layer, the
    cache under `layer_past`, final_layer_norm, an untied LM head."""

    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    cache_keyword = "layer_past"

    def heads_cuttable(self, hf):
        return True

    def embed(self, hf, ids, positions):
        return hf.gpt_neox.emb_dropout(hf.gpt_neox.embed_in(ids))

    def position_embeddings(self, hf, hidden, positions):
        return hf.gpt_neox.rotary_emb(hidden, position_ids=positions)

    def positions_sliceable(self, hf):
        return _plain_rotary(hf.gpt_neox.rotary_emb)

    def lean_step(self, layer, config):
        attend = hf_compat.library_attention(layer.attention, config._attn_implementation)
        return None if attend is None else _NeoXStep(layer, lambda *args: self.run_layer(layer, *args), attend)

    def logits(self, hf, hidden):
        return hf.lm_head(hf.gpt_neox.final_layer_norm(hidden))

    def head_modules(self, hf):
        return [hf.gpt_neox.final_layer_norm, hf.lm_head]

    def slices(self, layer, config, heads, kv_heads, ffn):
        slices: Slices = {}
        attention, mlp, head_dim = layer.attention, layer.mlp, self.head_dim(config)
        if heads < self.heads(config):
            slices["attention.query_key_value.weight"] = attention.query_key_value.weight[: 3 * heads * head_dim]
            slices["attention.query_key_value.bias"] = attention.query_key_value.bias[: 3 * heads * head_dim]
            slices["attention.dense.weight"] = attention.dense.weight[:, : heads * head_dim]
        if ffn < self.ffn(config):
            slices["mlp.dense_h_to_4h.weight"] = mlp.dense_h_to_4h.weight[:ffn]
            slices["mlp.dense_h_to_4h.bias"] = mlp.dense_h_to_4h.bias[:ffn]
            slices["mlp.dense_4h_to_h.weight"] = mlp.dense_4h_to_h.weight[:, :ffn]
        return slices

    def out_projection(self, layer):
        return layer.attention.dense.weight

    def scratch_config(self, model_type, sizes):
        from transformers import GPTNeoXConfig

        if sizes["kv_heads"] != sizes["heads"]:
            raise UserError("model.kv_heads: GPT-NeoX has no grouped key/value heads (leave it null)")
        return GPTNeoXConfig(vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                             num_attention_heads=sizes["heads"], intermediate_size=sizes["ffn"], max_position_embeddings=sizes["context"],
                             hidden_dropout=sizes["dropout"], attention_dropout=sizes["dropout"], rope_theta=sizes["rope_theta"],
                             bos_token_id=sizes["bos_token_id"], eos_token_id=sizes["eos_token_id"], tie_word_embeddings=False)


# --- encoders --------------------------------------------------------------------------------------


class EncoderLayout(Layout):
    auto_class = "AutoModelForSequenceClassification"
    scratch_tokenizer = "wordpiece"  # what a run without a pretrained tokenizer trains
    scratch_token_types = False  # whether a model built here takes token type ids

    def position_offset(self, config) -> int:
        """Positions numbered from this id (RoBERTa's from pad_token_id + 1)."""
        return 0

    def max_input_length(self, config):
        return config.max_position_embeddings - self.position_offset(config)

    def token_types(self, config) -> bool:
        return getattr(config, "type_vocab_size", 0) > 1

    def stem(self, hf: nn.Module, ids: torch.Tensor, padding: Optional[torch.Tensor], types: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The embeddings and what every layer of the pass takes besides the hidden states."""
        raise NotImplementedError

    def run_layer(self, hf: nn.Module, index: int, hidden: torch.Tensor, extras: dict, cut: Optional[LayerCut]) -> torch.Tensor:
        return hf_compat.call_layer(self.layers(hf)[index], cut, hidden, attention_mask=extras["mask"])

    def classify(self, hf: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scratch_config(self, model_type: str, sizes: dict):
        raise NotImplementedError


class BertEncoder(EncoderLayout):
    """BERT and its relatives: base_model.encoder.layer of BertLayer-like modules. Quirks: RoBERTa
    and XLM-R number positions from pad_token_id + 1 and classify with their own head on <s>;
    ELECTRA projects its embeddings to the hidden size and has no pooler."""

    model_types = ("bert", "electra")
    layers_path = "base_model.encoder.layer"
    scratch_token_types = True

    def __init__(self, roberta_positions: bool = False):
        self.roberta_positions = roberta_positions

    def heads_cuttable(self, hf):
        return True

    def position_offset(self, config):
        return config.pad_token_id + 1 if self.roberta_positions else 0

    def stem(self, hf, ids, padding, types):
        base = hf.base_model
        hidden = base.embeddings(input_ids=ids, token_type_ids=types)
        project = getattr(base, "embeddings_project", None)
        if project is not None:
            hidden = project(hidden)
        length = ids.shape[1]
        return hidden, {"mask": hf_compat.additive_mask(padding, length, length, hidden.dtype, hidden.device, causal=False)}

    def classify(self, hf, hidden):
        pooler = getattr(hf.base_model, "pooler", None)
        if pooler is not None:  # BERT: pooler, dropout, classifier
            return hf.classifier(hf.dropout(pooler(hidden)))
        return hf.classifier(hidden)  # a classification head that reads the first token itself

    def head_modules(self, hf):
        pooler = getattr(hf.base_model, "pooler", None)
        return [m for m in (pooler, hf.classifier) if m is not None]

    def slices(self, layer, config, heads, kv_heads, ffn):
        slices: Slices = {}
        head_dim = self.head_dim(config)
        if heads < self.heads(config):
            rows = heads * head_dim
            for name in ("query", "key", "value"):
                proj = getattr(layer.attention.self, name)
                slices[f"attention.self.{name}.weight"] = proj.weight[:rows]
                slices[f"attention.self.{name}.bias"] = proj.bias[:rows]
            slices["attention.output.dense.weight"] = layer.attention.output.dense.weight[:, :rows]
        if ffn < self.ffn(config):
            slices["intermediate.dense.weight"] = layer.intermediate.dense.weight[:ffn]
            slices["intermediate.dense.bias"] = layer.intermediate.dense.bias[:ffn]
            slices["output.dense.weight"] = layer.output.dense.weight[:, :ffn]
        return slices

    def out_projection(self, layer):
        return layer.attention.output.dense.weight

    def scratch_config(self, model_type, sizes):
        from transformers import AutoConfig

        positions = sizes["max_length"] + (sizes["pad_token_id"] + 1 if self.roberta_positions else 0)
        extra = {"embedding_size": sizes["hidden"]} if model_type == "electra" else {}
        return AutoConfig.for_model(
            model_type, vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
            num_attention_heads=sizes["heads"], intermediate_size=sizes["ffn"], max_position_embeddings=positions,
            hidden_dropout_prob=sizes["dropout"], attention_probs_dropout_prob=sizes["dropout"], pad_token_id=sizes["pad_token_id"],
            type_vocab_size=1 if self.roberta_positions else 2, num_labels=sizes["num_labels"], problem_type=sizes["problem_type"], **extra,
        )


class RobertaEncoder(BertEncoder):
    model_types = ("roberta", "xlm-roberta")
    scratch_tokenizer = "roberta_bpe"
    scratch_token_types = False

    def __init__(self):
        super().__init__(roberta_positions=True)


class DistilBertEncoder(EncoderLayout):
    """DistilBERT: its own names (transformer.layer of attention.q_lin.., ffn.lin1/lin2, dim,
    n_layers, hidden_dim), no token types, a pre_classifier + ReLU head on the first token."""

    model_types = ("distilbert",)
    layers_path = "distilbert.transformer.layer"
    ffn_key = "hidden_dim"

    def heads_cuttable(self, hf):
        return True

    def token_types(self, config):
        return False

    def stem(self, hf, ids, padding, types):
        hidden = hf.distilbert.embeddings(ids)
        length = ids.shape[1]
        return hidden, {"mask": hf_compat.additive_mask(padding, length, length, hidden.dtype, hidden.device, causal=False)}

    def classify(self, hf, hidden):
        pooled = torch.relu(hf.pre_classifier(hidden[:, 0]))
        return hf.classifier(hf.dropout(pooled))

    def head_modules(self, hf):
        return [hf.pre_classifier, hf.classifier]

    def slices(self, layer, config, heads, kv_heads, ffn):
        slices: Slices = {}
        attention, head_dim = layer.attention, self.head_dim(config)
        if heads < self.heads(config):
            for name in ("q_lin", "k_lin", "v_lin"):
                proj = getattr(attention, name)
                slices[f"attention.{name}.weight"] = proj.weight[: heads * head_dim]
                slices[f"attention.{name}.bias"] = proj.bias[: heads * head_dim]
            slices["attention.out_lin.weight"] = attention.out_lin.weight[:, : heads * head_dim]
        if ffn < self.ffn(config):
            slices["ffn.lin1.weight"] = layer.ffn.lin1.weight[:ffn]
            slices["ffn.lin1.bias"] = layer.ffn.lin1.bias[:ffn]
            slices["ffn.lin2.weight"] = layer.ffn.lin2.weight[:, :ffn]
        return slices

    def out_projection(self, layer):
        return layer.attention.out_lin.weight

    def scratch_config(self, model_type, sizes):
        from transformers import DistilBertConfig

        return DistilBertConfig(vocab_size=sizes["vocab_size"], dim=sizes["hidden"], n_layers=sizes["layers"], n_heads=sizes["heads"],
                                hidden_dim=sizes["ffn"], max_position_embeddings=sizes["max_length"], dropout=sizes["dropout"],
                                attention_dropout=sizes["dropout"], pad_token_id=sizes["pad_token_id"], num_labels=sizes["num_labels"],
                                problem_type=sizes["problem_type"])


class DebertaV2Encoder(EncoderLayout):
    """DeBERTa v2/v3: disentangled attention over relative positions (relative_pos and the shared
    rel_embeddings, computed once per pass and given to every layer), a 0/1 mask, layers that
    return (hidden, attention), the optional convolution after the first layer, a ContextPooler
    head. Its attention reshapes by the config's head count, so its heads are not cut."""

    model_types = ("deberta-v2",)
    layers_path = "deberta.encoder.layer"

    def stem(self, hf, ids, padding, types):
        encoder = hf.deberta.encoder
        padding = torch.ones_like(ids) if padding is None else padding
        hidden = hf.deberta.embeddings(input_ids=ids, token_type_ids=types, mask=padding)
        extras = {"mask": encoder.get_attention_mask(padding), "relative_pos": encoder.get_rel_pos(hidden),
                  "rel_embeddings": encoder.get_rel_embedding(), "embedded": hidden, "padding": padding}
        return hidden, extras

    def run_layer(self, hf, index, hidden, extras, cut):
        out, _ = hf_compat.call_layer(self.layers(hf)[index], cut, hidden, extras["mask"], relative_pos=extras["relative_pos"],
                                      rel_embeddings=extras["rel_embeddings"])
        conv = hf.deberta.encoder.conv
        if index == 0 and conv is not None:
            out = conv(extras["embedded"], out, extras["padding"])
        return out

    def classify(self, hf, hidden):
        return hf.classifier(hf.dropout(hf.pooler(hidden)))

    def head_modules(self, hf):
        return [hf.pooler, hf.classifier]

    def slices(self, layer, config, heads, kv_heads, ffn):
        if ffn >= self.ffn(config):
            return {}
        return {"intermediate.dense.weight": layer.intermediate.dense.weight[:ffn], "intermediate.dense.bias": layer.intermediate.dense.bias[:ffn],
                "output.dense.weight": layer.output.dense.weight[:, :ffn]}

    def scratch_config(self, model_type, sizes):
        from transformers import DebertaV2Config

        # DeBERTa v3's settings: relative attention both ways, no absolute positions in the input.
        return DebertaV2Config(vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                               num_attention_heads=sizes["heads"], intermediate_size=sizes["ffn"], max_position_embeddings=sizes["max_length"],
                               hidden_dropout_prob=sizes["dropout"], attention_probs_dropout_prob=sizes["dropout"], pad_token_id=sizes["pad_token_id"],
                               type_vocab_size=0, relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
                               num_labels=sizes["num_labels"], problem_type=sizes["problem_type"])


LAYOUTS: dict[str, Layout] = {}
for _layout in (RotaryDecoder(), GPT2Decoder(), NeoXDecoder(), BertEncoder(), RobertaEncoder(), DistilBertEncoder(), DebertaV2Encoder()):
    for _type in _layout.model_types:
        LAYOUTS[_type] = _layout


def layout_for(model_type: str, causal: bool) -> Layout:
    """The layout of a `model_type`, checked to be a decoder (causal) or an encoder."""
    layout = LAYOUTS.get(model_type)
    if layout is None or layout.causal != causal:
        kind = "decoder" if causal else "encoder"
        known = ", ".join(sorted(t for t, each in LAYOUTS.items() if each.causal == causal))
        raise UserError(f"model_type {model_type!r} is not a supported {kind} (supported: {known}); "
                        "docs/architecture.md, 'how to add an architecture', says what a new one takes")
    return layout


def layout_kind(model_type: str) -> bool:
    """Whether a supported model_type is a decoder (causal) rather than an encoder."""
    if model_type not in LAYOUTS:
        raise UserError(f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(LAYOUTS))})")
    return LAYOUTS[model_type].causal


def supported_types(causal: bool) -> list[str]:
    return sorted(t for t, layout in LAYOUTS.items() if layout.causal == causal)
