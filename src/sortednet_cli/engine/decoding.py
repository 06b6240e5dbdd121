"""What generate and bench-decode share: a decoder checkpoint opened with its tokenizer, and
prompts checked against that tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


from ..errors import UserError
from ..models import FAMILIES, family_of
from ..models.transformer import SortedDecoder
from ..tasks.text.tokenizers import tokenizer_from_state, tokenizer_kind, unknown_characters
from .eval_grid import TrainedRun, open_trained_run
from .runtime import set_threads


@dataclass
class DecoderRun:
    run: TrainedRun
    model: SortedDecoder
    tokenizer: object

    @property
    def depth(self) -> int:
        return self.model.depth_limits[0]

    def encode(self, prompt: str) -> list[int]:
        if not prompt:
            raise UserError("prompt is empty: give the text to continue, e.g. prompt='ROMEO:'")
        if tokenizer_kind(self.tokenizer) == "char":  # a vocabulary of the training text's characters
            unknown = unknown_characters(self.tokenizer, prompt)
            if unknown:
                raise UserError(f"the prompt has characters this model's tokenizer has never seen: {' '.join(repr(c) for c in unknown)}")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        context = self.model.config.max_position_embeddings
        if len(ids) >= context:
            raise UserError(f"the prompt is {len(ids)} tokens, which fills the model's context of {context}: shorten it")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def open_decoder(location: Optional[str], device_name: str, threads: int, console) -> DecoderRun:
    """A train checkpoint of the decoder family, in eval mode, float32, with its tokenizer."""
    set_threads(threads, "threads")
    run = open_trained_run(location, device_name, console)
    if not family_of(run.model).decodes:
        raise UserError(f"{run.path} holds a model={run.cfg.model.name} model, which does not decode; generate and bench-decode "
                        f"need one that does ({', '.join(n for n in FAMILIES.names() if FAMILIES.get(n).decodes)})")
    if not run.task_state or "tokenizer" not in run.task_state:
        raise UserError(f"{run.path} has no tokenizer saved with it")
    return DecoderRun(run, run.model.float().eval(), tokenizer_from_state(run.task_state["tokenizer"]))
