"""Instruction data for decoders: JSON Lines of prompt/response pairs or chat `messages`, the
loss on the response tokens only.

Each line is one example, either `{"prompt": ..., "response": ..., "system": ...}` (field names
configurable, `system` optional) or `{"messages": [{"role": "system"|"user"|"assistant",
"content": ...}, ...]}`. It is rendered with the tokenizer's chat template (`template=chat`,
the default `auto` where the tokenizer has one) or with the plain template:

    {system}\\n\\n                        (when there is one)
    ### Instruction:\\n{user turn}\\n\\n
    ### Response:\\n{assistant turn}<eos>

Only the assistant turns (and the end-of-sequence token after each, so the model learns to stop)
carry loss. Length policy: an example longer than `max_length` tokens keeps its first
`max_length` (the end of its last response is cut); one whose prompt leaves no token of response
within `max_length` is refused, naming its file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import torch

from ...errors import UserError

IGNORE = -100  # the target of a token without loss (cross_entropy's ignore_index)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """One example: its turns (role, content) in order, and where it came from."""

    turns: tuple[tuple[str, str], ...]
    where: str  # "file:line"

    @property
    def prompt_turns(self) -> tuple[tuple[str, str], ...]:
        """Everything before the last assistant turn (what generation is prompted with)."""
        last = max(i for i, (role, _) in enumerate(self.turns) if role == "assistant")
        return self.turns[:last]


def _text(value, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, not {type(value).__name__}")
    return value


def parse_example(record, fields, where: str) -> Conversation:
    """One JSON record as a Conversation; `fields` names the prompt, response, system and
    messages keys (data.prompt_field, ...)."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: an example must be a JSON object, not {type(record).__name__}")
    if fields.messages_field in record:
        messages = record[fields.messages_field]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: {fields.messages_field!r} must be a non-empty list of {{role, content}} objects")
        turns = []
        for number, message in enumerate(messages, 1):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise UserError(f"{where}: message {number} needs a 'role' and a 'content'")
            if message["role"] not in ROLES:
                raise UserError(f"{where}: message {number} has role {message['role']!r}; roles are {', '.join(ROLES)}")
            turns.append((message["role"], _text(message["content"], "content", where)))
        if not any(role == "assistant" for role, _ in turns):
            raise UserError(f"{where}: the messages have no assistant turn: nothing to learn from")
        if any(role == "assistant" and not content.strip() for role, content in turns):
            raise UserError(f"{where}: an assistant turn is empty")
        return Conversation(tuple(turns), where)
    for field in (fields.prompt_field, fields.response_field):
        if field not in record:
            raise UserError(f"{where}: no {field!r} field (nor {fields.messages_field!r}); set data.prompt_field / data.response_field "
                            "to the names this file uses")
    response = _text(record[fields.response_field], fields.response_field, where)
    if not response.strip():
        raise UserError(f"{where}: the response ({fields.response_field!r}) is empty")
    turns = [("user", _text(record[fields.prompt_field], fields.prompt_field, where)), ("assistant", response)]
    if record.get(fields.system_field):
        turns.insert(0, ("system", _text(record[fields.system_field], fields.system_field, where)))
    return Conversation(tuple(turns), where)


def read_jsonl(path: Path, fields) -> list[Conversation]:
    if not path.is_file():
        raise UserError(f"{path}: no such file (JSON Lines: one {{prompt, response}} or {{messages}} object per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        examples.append(parse_example(record, fields, where))
    if not examples:
        raise UserError(f"{path} holds no examples")
    return examples


# --- templates -------------------------------------------------------------------------------------


def plain_segments(turns, generation_prompt: bool, eos: str) -> list[tuple[str, bool]]:
    """The plain template as (text, carries loss) pieces."""
    pieces: list[tuple[str, bool]] = []
    for role, content in turns:
        if role == "system":
            pieces.append((f"{content}\n\n", False))
        elif role == "user":
            pieces.append((f"### Instruction:\n{content}\n\n", False))
        else:
            pieces.append(("### Response:\n", False))
            pieces.append((content + eos, True))
            pieces.append(("\n\n", False))
    if pieces and pieces[-1] == ("\n\n", False):
        pieces.pop()  # nothing follows the last response but the end of the sequence
    if generation_prompt:
        pieces.append(("### Response:\n", False))
    return pieces


def chat_segments(tokenizer, turns, generation_prompt: bool) -> list[tuple[str, bool]]:
    """The tokenizer's chat template as (text, carries loss) pieces: each assistant turn is what
    rendering the conversation up to it adds after rendering up to it with a generation prompt."""
    messages = [{"role": role, "content": content} for role, content in turns]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[:index + 1], tokenize=False)
        if not (before.startswith(done) and through.startswith(before)):
            raise UserError("the tokenizer's chat template does not render a conversation as a prefix of its continuation; use data.template=plain")
        pieces += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    if generation_prompt:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pieces.append((rendered[len(done):], False))
    return [piece for piece in pieces if piece[0]]


def resolve_template(tokenizer, asked: str) -> str:
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if asked == "chat" and not has_chat:
        raise UserError("data.template=chat: this model's tokenizer has no chat template; use data.template=plain (or auto)")
    if asked == "auto":
        return "chat" if has_chat else "plain"
    return asked


def segments(tokenizer, template: str, turns, generation_prompt: bool = False) -> list[tuple[str, bool]]:
    if template == "chat":
        return chat_segments(tokenizer, turns, generation_prompt)
    return plain_segments(turns, generation_prompt, tokenizer.eos_token or "")


def encode_segments(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Token ids of the pieces, each tokenized on its own (so loss boundaries are exact), and
    which carry loss. The template writes every special token itself."""
    ids: list[int] = []
    loss: list[bool] = []
    for text, carries in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        loss += [carries] * len(piece)
    return ids, loss


def prompt_ids(tokenizer, template: str, turns) -> list[int]:
    """Turns before a response as the model was trained to see them, up to where it starts."""
    ids, _ = encode_segments(tokenizer, segments(tokenizer, template, turns, generation_prompt=True))
    return ids


# --- tokenized examples ------------------------------------------------------------------------


@dataclass
class InstructionSet:
    """Examples tokenized once and stored flat: example i is ids[offsets[i]:offsets[i + 1]],
    `loss` marking the tokens the model is trained to predict."""

    ids: torch.Tensor  # int64 [total tokens]
    loss: torch.Tensor  # bool, same shape
    offsets: torch.Tensor  # int64 [examples + 1]

    @classmethod
    def encode(cls, tokenizer, template: str, examples: list[Conversation], max_length: int) -> "InstructionSet":
        rows, masks = [], []
        for example in examples:
            ids, loss = encode_segments(tokenizer, segments(tokenizer, template, example.turns))
            first = loss.index(True) if True in loss else len(loss)
            if first >= max_length:
                raise UserError(f"{example.where}: the prompt is {first} tokens, which leaves no room for a response within "
                                f"data.max_length={max_length}")
            rows.append(ids[:max_length])
            masks.append(loss[:max_length])
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        flat = lambda lists, dtype: torch.tensor([x for row in lists for x in row], dtype=dtype)  # noqa: E731
        return cls(flat(rows, torch.long), flat(masks, torch.bool), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def response_tokens(self) -> int:
        return int(self.loss.sum())

    def batch(self, rows: torch.Tensor, pad_id: int, device: torch.device):
        """Rows padded on the right to the longest (dynamic padding); inputs are the tokens but
        the last, targets the next token where it carries loss, IGNORE elsewhere."""
        from ...models.transformer import TokenBatch
        from .batches import padded_rows

        ids, present, gather = padded_rows(self.ids, self.offsets, rows, pad_id)
        targets = torch.where(present & self.loss[gather], ids, IGNORE)
        batch = TokenBatch(ids[:, :-1], present[:, :-1].long())
        return batch.to(device), targets[:, 1:].to(device)
