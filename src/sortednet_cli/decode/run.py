"""What generate and bench-decode share: a trained decoder with its tokenizer, and prompts
encoded and checked against that tokenizer (engine.eval_grid.open_decoder opens one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import UserError
from ..models import FAMILIES, family_of
from ..models.transformer import SortedDecoder
from ..tasks.text.instructions import prompt_ids
from ..tasks.text.tokenizers import tokenizer_from_state, tokenizer_kind, unknown_characters


@dataclass
class DecoderRun:
    run: Any  # the engine's TrainedRun (cfg, model, path, device, task_state)
    model: SortedDecoder
    tokenizer: object

    @property
    def depth(self) -> int:
        return self.model.depth_limits[0]

    @property
    def template(self) -> str:
        """The instruction template the run trained with, or the tokenizer's chat template."""
        saved = (self.run.task_state or {}).get("template")
        if saved:
            return saved
        if getattr(self.tokenizer, "chat_template", None):
            return "chat"
        raise UserError(f"generate.chat=true: {self.run.path} was not instruction-tuned (data=instructions) and its tokenizer has "
                        "no chat template; leave generate.chat false to continue plain text")

    def encode(self, prompt: str, chat: bool = False, system: Optional[str] = None) -> list[int]:
        """The prompt's token ids; with `chat`, rendered as a user turn (after `system`) through
        the template the run was instruction-tuned with, up to where the response starts."""
        if not prompt:
            raise UserError("prompt is empty: give the text to continue, e.g. prompt='ROMEO:'")
        if tokenizer_kind(self.tokenizer) == "char":  # a vocabulary of the training text's characters
            unknown = unknown_characters(self.tokenizer, prompt + (system or ""))
            if unknown:
                raise UserError(f"the prompt has characters this model's tokenizer has never seen: {' '.join(repr(c) for c in unknown)}")
        if chat:
            turns = ([("system", system)] if system else []) + [("user", prompt)]
            ids = prompt_ids(self.tokenizer, self.template, turns)
        else:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        context = self.model.config.max_position_embeddings
        if len(ids) >= context:
            raise UserError(f"the prompt is {len(ids)} tokens, which fills the model's context of {context}: shorten it")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def decoder_run(run: Any) -> DecoderRun:
    """A trained run (the engine's TrainedRun) of a family that decodes, in eval mode, float32,
    with its saved tokenizer."""
    if not family_of(run.model).decodes:
        raise UserError(f"{run.path} holds a model={run.cfg.model.name} model, which does not decode; generate and bench-decode "
                        f"need one that does ({', '.join(n for n in FAMILIES.names() if FAMILIES.get(n).decodes)})")
    if not run.task_state or "tokenizer" not in run.task_state:
        raise UserError(f"{run.path} has no tokenizer saved with it")
    return DecoderRun(run, run.model.float().eval(), tokenizer_from_state(run.task_state["tokenizer"]))
