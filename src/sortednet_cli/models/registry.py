"""Model families: one plug-in object per family, registered once.

A `ModelFamily` declares everything code outside the family may ask of it: how it builds a
network from its config (and what it needs from the task to do so), how it rebuilds one from a
checkpoint's architecture description, which task kinds it pairs with, and its optional
capabilities (a Hugging Face export, decoding, its bench). The engine, the tasks and the commands
ask the family; none of them compares family names or model types.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the model.name that picks it (conf/model/<name>.yaml)
    schema: type  # its config dataclass (typed overrides fail at once, naming the key)
    build: Callable[..., nn.Module]  # (model cfg, **task.model_fields()) -> the full sorted network
    archs: dict[str, Callable[..., nn.Module]]  # arch["name"] -> rebuild(**arch without its name)
    task_kinds: frozenset[str]  # the Task.kind values it pairs with
    aliases: tuple[str, ...] = ()  # other model.name values (presets) meaning this family
    # Optional capabilities, None / False where the family has none.
    hf_auto_class: Optional[str] = None  # export writes Hugging Face directories this transformers class loads
    decodes: bool = False  # generate and bench-decode run it (a causal LM with exits)
    # (built network) -> None: its layers recompute their activations in the backward (trainer.gradient_checkpointing)
    gradient_checkpointing: Optional[Callable[[nn.Module], None]] = None
    text: Optional[Callable[..., "TextProfile"]] = None  # (model cfg, read_pretrained) -> what a text task needs to know
    # sortednet bench for it: () -> its side of the bench (engine/bench.py's FamilyBench: the plain loop, its own comparisons)
    bench: Optional[Callable[[], Any]] = None
    bench_hint: str = ""  # why there is no bench, and what to run instead
    flop_context: Callable[[nn.Module], Any] = field(default=lambda model: contextlib.nullcontext())
    # (model cfg, **task.model_fields_without_data()) -> models.cost.TransformerShape: the sizes
    # describe's memory estimate (engine/memory.py) takes, from the config alone; None: no estimate
    memory_shape: Optional[Callable[..., Any]] = None


@dataclass(frozen=True)
class TextProfile:
    """What a text task asks of the model config: whose tokenizer to use and how inputs look.
    A task saves it in its checkpoint state, so a run reopens without the pretrained directory."""

    pretrained: Optional[str]  # a hub id or directory whose own tokenizer is used
    scratch_tokenizer: str  # the tokenizer kind trained here without one: wordpiece, roberta_bpe, byte_bpe
    token_types: bool  # the model takes token type ids (sentence pairs)
    max_length: Optional[int]  # the longest input it takes (None: unknown, the pretrained directory not read)

    @classmethod
    def for_task(cls, model_cfg, state: Optional[dict]) -> "TextProfile":
        """The profile a checkpoint saved, or the family's reading of the model config."""
        saved = (state or {}).get("profile")
        if saved:
            return cls(**saved)
        return FAMILIES.get(model_cfg.name).text(model_cfg, read_pretrained=state is None)


FAMILIES: Registry[ModelFamily] = Registry("model.name", group="model")
_BY_ARCH: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    for name in (family.name, *family.aliases):
        FAMILIES.register(name, schema=family.schema)(family)
    for arch in family.archs:
        _BY_ARCH[arch] = family
    return family


def family_named(name: Any) -> ModelFamily:
    return FAMILIES.get(name)


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a built network (from the architecture it describes itself with)."""
    return _BY_ARCH[model.arch["name"]]


def build_model(cfg, fields: Optional[dict] = None) -> nn.Module:
    """The full-size sorted network for a `model` config; `fields` are what the task decides
    about the model (a text task's vocabulary size and label count: `task.model_fields()`)."""
    return FAMILIES.get(cfg.name).build(cfg, **(fields or {}))


def build_from_arch(arch: dict) -> nn.Module:
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in _BY_ARCH:
        raise UserError(f"architecture {name!r} is not known (known: {', '.join(sorted(_BY_ARCH))})")
    return _BY_ARCH[name].archs[name](**kwargs)


def families_for(task_kind: str) -> list[str]:
    """The model.name values that pair with a task kind (for error messages)."""
    return [name for name in FAMILIES.names() if task_kind in FAMILIES.get(name).task_kinds]
