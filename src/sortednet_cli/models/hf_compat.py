"""Every call into `transformers` internals, in one place (tested against transformers 5.24).

The Transformer families run the library's own layer modules on the library's own weights;
sortednet only decides which layers run and which slices of their weights. What that needs from
the library below its public `forward` -- layer call signatures, the attention-mask convention,
rotary position embeddings, the KV-cache protocol, the classification heads, which parameter
names hold heads and FFN units -- has changed between releases (position_embeddings became
required in 4.46, layers return tensors since 4.57, the cache keyword is `cache` since 5.24),
so it lives here and in hf_layouts.py (one adapter per layer layout) and nowhere else.
tests/test_hf_compat.py pins every adapter against the library's own forward on the same weights.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import torch
from torch import nn

# --- masks -------------------------------------------------------------------------------------


def additive_mask(padding: Optional[torch.Tensor], query_len: int, key_len: int, dtype: torch.dtype,
                  device: torch.device, causal: bool, window: Optional[int] = None) -> Optional[torch.Tensor]:
    """A float mask [batch or 1, 1, query, key]: 0 where a query may attend, the dtype's minimum
    where it may not. `padding` is [batch, key] with 1 for real tokens. Causal masks assume the
    queries are the last `query_len` of `key_len` positions (decoding with a cache); `window`
    (sliding-window layers) also hides keys `window` or more positions behind the query, as the
    library's sliding masks do. Both eager and SDPA attention take this form, which keeps us off
    the mask helpers whose signatures changed between releases. None when nothing is masked."""
    allowed = None
    if causal and (query_len > 1 or (window is not None and key_len > window)):
        offset = key_len - query_len
        rows = torch.arange(query_len, device=device)[:, None] + offset
        keys = torch.arange(key_len, device=device)[None, :]
        allowed = keys <= rows
        if window is not None:
            allowed = allowed & (keys > rows - window)
        allowed = allowed[None, None]
    if padding is not None and not bool(padding.all()):
        keys = padding[:, None, None, :].bool()
        allowed = keys if allowed is None else allowed & keys
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


# --- layers --------------------------------------------------------------------------------------


def call_layer(layer: nn.Module, slicer: Optional[Callable[[nn.Module], dict[str, torch.Tensor]]], *args, **kwargs):
    """The library's layer on its own parameters, or with some replaced by narrower tensors (a
    sub-model: slices of the full tensors, so gradients reach the shared ones).

    `slicer(layer)` takes the slices (parameter name inside the layer -> tensor) inside the call,
    after the layer's own forward pre-hooks, and the full tensors are back before its forward
    hooks: a layer sharded by FSDP gathers its full parameters in its pre-hook and frees them in
    its post-hook, so slices taken outside would cut the local shard."""
    if slicer is None:
        return layer(*args, **kwargs)
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []

    def narrow(module, args):
        for name, tensor in slicer(layer).items():
            path, _, attribute = name.rpartition(".")
            owner = layer.get_submodule(path)
            swapped.append((owner, attribute, owner._parameters[attribute]))
            owner._parameters[attribute] = tensor

    def restore(*_):
        while swapped:
            owner, attribute, full = swapped.pop()
            owner._parameters[attribute] = full

    before = layer.register_forward_pre_hook(narrow)  # after FSDP's (which it prepends)
    after = layer.register_forward_hook(restore, prepend=True, always_call=True)  # before FSDP's
    try:
        return layer(*args, **kwargs)
    finally:
        before.remove()
        after.remove()
        restore()


def library_attention(attention: nn.Module, implementation: str, **extra) -> Optional[Callable[..., torch.Tensor]]:
    """The library's attention function as `attention` (one of its attention modules) calls it
    in eval mode under `implementation`, grouped heads handled its way, with the module's own
    `extra` keywords (Gemma 2's softcap): (query, keys, values, mask) -> [batch, positions,
    heads, head_dim]. "sdpa" is the library's integration; "eager" the attention module's own
    modeling file's eager_attention_forward (each model defines its own). None for any other
    implementation. The lean decoding steps (hf_layouts) call it, so their attention is the
    library's to the bit."""
    if implementation == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as forward
    elif implementation == "eager":
        forward = getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)
        if forward is None:
            return None
    else:
        return None
    scaling = attention.scaling
    return lambda query, keys, values, mask: forward(attention, query, keys, values, mask, dropout=0.0, scaling=scaling, **extra)[0]


# --- the KV cache ---------------------------------------------------------------------------


class LayerCache:
    """A KV cache whose layers may hold different lengths, cropped to absolute lengths.

    Early exit and self-speculation leave the layers above an exit behind the layers below it,
    and verification rolls rejected tokens back. The library's caches changed what `crop` means
    between releases, so this implements the one method its attention layers call, `update`
    (append and return the whole sequence), and keeps lengths in our hands.

    Each layer's keys and values live in one buffer of `capacity` positions, allocated at the
    first write: `update` copies the new positions into their slice and returns a view of the
    filled prefix (no concatenation of the whole sequence per token and per layer), and `crop`
    only moves the length back (the next write overwrites what lay beyond). A write past the
    capacity doubles the buffer, one copy. The layers' buffers are slices of one tensor where
    their shapes agree (allocated at the first write), so `keep_all` moves a path's keys and
    values in every layer at once."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.capacity = capacity
        self.lengths = [0] * num_layers
        self._keys: list[Optional[torch.Tensor]] = [None] * num_layers
        self._values: list[Optional[torch.Tensor]] = [None] * num_layers
        self._joint: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._in_joint: Optional[list[bool]] = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        start = self.lengths[layer_idx]
        stop = start + keys.shape[-2]
        if self._joint is None and stop <= self.capacity:
            self._allocate_joint(keys, values)
        buffer = self._keys[layer_idx]
        if buffer is None or buffer.shape[:-2] != keys.shape[:-2] or buffer.dtype != keys.dtype or stop > buffer.shape[-2]:
            self._grow(layer_idx, keys, values, max(stop, self.capacity, 2 * (0 if buffer is None else buffer.shape[-2])))
        keys_buffer, values_buffer = self._keys[layer_idx], self._values[layer_idx]
        keys_buffer.narrow(-2, start, stop - start).copy_(keys)
        values_buffer.narrow(-2, start, stop - start).copy_(values)
        self.lengths[layer_idx] = stop
        return keys_buffer.narrow(-2, 0, stop), values_buffer.narrow(-2, 0, stop)

    def _allocate_joint(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Every layer's buffers as slices of one keys and one values tensor shaped like the
        first write (a layer whose writes are shaped otherwise gets its own in `_grow`)."""
        count = len(self.lengths)
        self._joint = tuple(new.new_empty(count, *new.shape[:-2], self.capacity, new.shape[-1]) for new in (keys, values))
        self._keys, self._values = ([joint[layer] for layer in range(count)] for joint in self._joint)  # not unbind: its views refuse writes under autograd
        self._in_joint = [True] * count

    def _grow(self, layer: int, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        if self._in_joint is not None:
            self._in_joint[layer] = False
        filled = self.lengths[layer]
        for store, new in ((self._keys, keys), (self._values, values)):
            buffer = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
            if store[layer] is not None and filled:
                buffer[..., :filled, :] = store[layer][..., :filled, :]
            store[layer] = buffer

    def length(self, layer: int) -> int:
        return self.lengths[layer]

    def filled(self, layer: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The keys and values [batch, kv_heads, length, head_dim] one layer holds (None before any write)."""
        if self._keys[layer] is None:
            return None, None
        length = self.lengths[layer]
        return self._keys[layer][..., :length, :], self._values[layer][..., :length, :]

    def crop(self, layer: int, length: int) -> None:
        """Keep the first `length` positions of one layer."""
        self.lengths[layer] = min(self.lengths[layer], length)

    def keep(self, layer: int, start: int, slots: torch.Tensor) -> None:
        """Keep the first `start` positions of one layer, then those at `slots` (increasing, each
        at or after start), moved to start, start + 1, ...: a verified path of a draft tree."""
        for buffer in (self._keys[layer], self._values[layer]):
            buffer.narrow(-2, start, len(slots)).copy_(buffer.index_select(-2, slots))
        self.lengths[layer] = start + len(slots)

    def keep_all(self, start: int, slots: torch.Tensor) -> None:
        """`keep` in every layer: two copies in all where every layer is a slice of the joint
        buffers, one layer at a time otherwise."""
        if self._in_joint is None or not all(self._in_joint):
            for layer in range(len(self.lengths)):
                self.keep(layer, start, slots)
            return
        for joint in self._joint:
            joint.narrow(-2, start, len(slots)).copy_(joint.index_select(-2, slots))
        self.lengths = [start + len(slots)] * len(self.lengths)


def config_from_dict(config: dict):
    """A library config from its to_dict() form, of the class its model_type names."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))


def use_eager_attention(model: nn.Module) -> str:
    """Switch a transformers model to eager attention (the FLOP counter does not see CPU
    scaled-dot-product attention); returns the previous setting for `restore_attention`."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    return previous


def restore_attention(model: nn.Module, previous: str) -> None:
    model.set_attn_implementation(previous)
