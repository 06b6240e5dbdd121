"""Every call into `transformers` internals, in one place (tested against transformers 5.24).

The Transformer families run the library's own layer modules on the library's own weights;
sortednet only decides which layers run and which slices of their weights. What that needs from
the library below its public `forward` -- layer call signatures, the attention-mask convention,
rotary position embeddings, the KV-cache protocol, the classification heads, which parameter
names hold heads and FFN units -- has changed between releases (position_embeddings became
required in 4.46, layers return tensors since 4.57, the cache keyword is `cache` since 5.24),
so it lives here and nowhere else. tests/test_hf_compat.py pins each function against the
library's own forward on the same weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

# --- masks -------------------------------------------------------------------------------------


def additive_mask(padding: Optional[torch.Tensor], query_len: int, key_len: int, dtype: torch.dtype,
                  device: torch.device, causal: bool) -> Optional[torch.Tensor]:
    """A float mask [batch or 1, 1, query, key]: 0 where a query may attend, the dtype's minimum
    where it may not. `padding` is [batch, key] with 1 for real tokens. Causal masks assume the
    queries are the last `query_len` of `key_len` positions (decoding with a cache). Both eager
    and SDPA attention take this form, which keeps us off the mask helpers whose signatures
    changed between releases. None when nothing is masked."""
    allowed = None
    if causal:
        offset = key_len - query_len
        rows = torch.arange(query_len, device=device)[:, None] + offset
        allowed = (torch.arange(key_len, device=device)[None, :] <= rows)[None, None]
    if padding is not None and not bool(padding.all()):
        keys = padding[:, None, None, :].bool()
        allowed = keys if allowed is None else allowed & keys
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


# --- layers --------------------------------------------------------------------------------------


def _call(layer: nn.Module, slices: Optional[dict[str, torch.Tensor]], *args, **kwargs) -> torch.Tensor:
    """The library's layer (it returns a tensor since 4.57), on its own parameters or with some
    replaced by views (a narrower sub-model: the views share storage and gradients with the full
    tensors)."""
    if not slices:
        return layer(*args, **kwargs)
    return functional_call(layer, slices, args, kwargs, strict=False)


def run_encoder_layer(layer: nn.Module, hidden: torch.Tensor, mask: Optional[torch.Tensor],
                      slices: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """One BertLayer / RobertaLayer."""
    return _call(layer, slices, hidden, attention_mask=mask)


def run_decoder_layer(layer: nn.Module, hidden: torch.Tensor, mask: Optional[torch.Tensor], position_embeddings,
                      cache: Optional["LayerCache"] = None, slices: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """One LlamaDecoderLayer; with `cache`, its keys and values are appended there."""
    return _call(layer, slices, hidden, attention_mask=mask, position_embeddings=position_embeddings, cache=cache)


# --- width: which parameters hold heads and FFN units ----------------------------------------------


def encoder_slices(layer: nn.Module, heads: int, head_dim: int, ffn: int, full_heads: int, full_ffn: int) -> dict[str, torch.Tensor]:
    """Views of a BertLayer's tensors keeping the first `heads` heads and `ffn` FFN units."""
    slices: dict[str, torch.Tensor] = {}
    if heads < full_heads:
        rows = heads * head_dim
        attention = layer.attention
        for name in ("query", "key", "value"):
            proj = getattr(attention.self, name)
            slices[f"attention.self.{name}.weight"] = proj.weight[:rows]
            slices[f"attention.self.{name}.bias"] = proj.bias[:rows]
        slices["attention.output.dense.weight"] = attention.output.dense.weight[:, :rows]
    if ffn < full_ffn:
        slices["intermediate.dense.weight"] = layer.intermediate.dense.weight[:ffn]
        slices["intermediate.dense.bias"] = layer.intermediate.dense.bias[:ffn]
        slices["output.dense.weight"] = layer.output.dense.weight[:, :ffn]
    return slices


def decoder_slices(layer: nn.Module, heads: int, kv_heads: int, head_dim: int, ffn: int, full_heads: int, full_ffn: int) -> dict[str, torch.Tensor]:
    """Views of a LlamaDecoderLayer's tensors keeping the first `heads` query heads (and the
    first `kv_heads` key/value heads: whole groups) and `ffn` FFN units (MatFormer's nesting)."""
    slices: dict[str, torch.Tensor] = {}
    attention = layer.self_attn
    if heads < full_heads:
        for name, count in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
            proj = getattr(attention, name)
            slices[f"self_attn.{name}.weight"] = proj.weight[: count * head_dim]
            if proj.bias is not None:
                slices[f"self_attn.{name}.bias"] = proj.bias[: count * head_dim]
        slices["self_attn.o_proj.weight"] = attention.o_proj.weight[:, : heads * head_dim]
    if ffn < full_ffn:
        mlp = layer.mlp
        slices["mlp.gate_proj.weight"] = mlp.gate_proj.weight[:ffn]
        slices["mlp.up_proj.weight"] = mlp.up_proj.weight[:ffn]
        slices["mlp.down_proj.weight"] = mlp.down_proj.weight[:, :ffn]
        for name in ("gate_proj", "up_proj"):
            bias = getattr(mlp, name).bias
            if bias is not None:
                slices[f"mlp.{name}.bias"] = bias[:ffn]
    return slices


def zero_encoder_heads(layer: nn.Module, heads: int, head_dim: int) -> None:
    """Zero the output-projection columns of a BertLayer's heads after the first `heads`: the
    layer then computes what it computes with only those heads."""
    layer.attention.output.dense.weight[:, heads * head_dim:] = 0


def zero_decoder_heads(layer: nn.Module, heads: int, head_dim: int) -> None:
    layer.self_attn.o_proj.weight[:, heads * head_dim:] = 0


# --- encoders: embeddings and classification heads --------------------------------------------------


def encoder_layers(classifier: nn.Module) -> nn.ModuleList:
    return classifier.base_model.encoder.layer


def encoder_embed(classifier: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Word + position + token-type embeddings, their LayerNorm and dropout (RoBERTa derives its
    positions from the padding)."""
    return classifier.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


def encoder_classify(classifier: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The shared head on the first token's state: BERT's pooler, dropout and classifier;
    RoBERTa's classification head (its own dense + tanh on <s>)."""
    pooler = getattr(classifier.base_model, "pooler", None)
    if pooler is not None:
        return classifier.classifier(classifier.dropout(pooler(hidden)))
    return classifier.classifier(hidden)


def head_modules(classifier: nn.Module) -> nn.ModuleList:
    """The modules of the shared head (BERT: pooler + classifier; RoBERTa: classifier)."""
    pooler = getattr(classifier.base_model, "pooler", None)
    return nn.ModuleList([m for m in (pooler, classifier.classifier) if m is not None])


# --- decoders: embeddings, rotary positions, final norm and LM head ---------------------------------


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    return lm.model.layers


def decoder_embed(lm: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return lm.model.embed_tokens(input_ids)


def rotary(lm: nn.Module, hidden: torch.Tensor, positions: torch.Tensor):
    """(cos, sin) for `positions` [batch, seq]: every layer takes them as position_embeddings."""
    return lm.model.rotary_emb(hidden, position_ids=positions)


def decoder_logits(lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The shared final RMSNorm and LM head: what turns any exit's state into next-token logits."""
    return lm.lm_head(lm.model.norm(hidden))


def decoder_head_modules(lm: nn.Module) -> nn.ModuleList:
    return nn.ModuleList([lm.model.norm, lm.lm_head])


# --- the KV cache ---------------------------------------------------------------------------


class LayerCache:
    """A KV cache whose layers may hold different lengths, cropped to absolute lengths.

    Early exit and self-speculation leave the layers above an exit behind the layers below it,
    and verification rolls rejected tokens back. The library's caches changed what `crop` means
    between releases, so this implements the one method its attention layers call, `update`
    (append and return the whole sequence), and keeps lengths in our hands."""

    def __init__(self, num_layers: int):
        self.keys: list[Optional[torch.Tensor]] = [None] * num_layers
        self.values: list[Optional[torch.Tensor]] = [None] * num_layers

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.keys[layer_idx] is not None:
            keys = torch.cat([self.keys[layer_idx], keys], dim=-2)
            values = torch.cat([self.values[layer_idx], values], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values

    def length(self, layer: int) -> int:
        cached = self.keys[layer]
        return 0 if cached is None else cached.shape[-2]

    def crop(self, layer: int, length: int) -> None:
        """Keep the first `length` positions of one layer."""
        if self.keys[layer] is not None and self.keys[layer].shape[-2] > length:
            self.keys[layer] = self.keys[layer][..., :length, :]
            self.values[layer] = self.values[layer][..., :length, :]


def use_eager_attention(model: nn.Module) -> str:
    """Switch a transformers model to eager attention (the FLOP counter does not see CPU
    scaled-dot-product attention); returns the previous setting for `restore_attention`."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    return previous


def restore_attention(model: nn.Module, previous: str) -> None:
    model.set_attn_implementation(previous)
