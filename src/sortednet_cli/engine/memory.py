"""The memory per rank of training a Transformer's full model, estimated from its sizes alone.

`sortednet describe` prints it. Nothing is built or read: the sizes are the family's answer from
the model config (models.cost.TransformerShape), the plan is the trainer's settings. In bytes per
rank, with P the parameters, Pl the largest layer's, Pr = P - L * Pl the rest (embeddings, final
norm, head), N ranks, c the compute precision's bytes per element (4 in fp32, 2 in bf16 and fp16):

Parameters, gradients, optimizer state (AdamW: exp_avg and exp_avg_sq, both float32):
  single, ddp: the parameters stay float32 (4P; in bf16 and fp16, autocast's mixed precision, they
      are the master weights: no other copy), gradients 4P, AdamW 8P. Autocast keeps the
      low-precision cast of each linear layer's weight for the backward: at most cP more in bf16
      and fp16 (counted as cP: the embeddings and norms, which it does not cast, included).
      ddp: its gradient buckets hold another float32 copy of the gradients (4P), the default of
      torch's DistributedDataParallel (gradient_as_bucket_view=False).
  fsdp: the float32 parameters, their gradients and AdamW's states are sharded over the ranks,
      4P/N + 4P/N + 8P/N (in bf16 and fp16 the float32 shards are the master weights). In flight,
      unsharded in the compute precision: the root's parameters (Pr, gathered for the whole step)
      and two layers' (the one running and the one prefetched), c(Pr + 2Pl); and the unsharded
      gradients of the root and one layer before their reduce-scatter, c(Pr + Pl). With CPU
      offload the shards live in host memory (shown apart) and the GPU holds only what is in flight.

Activations of one draw (b sequences of s tokens on this rank, T = b * s tokens), each element
kept for the backward at r bytes on the residual stream and in the norms (float32 under autocast,
which runs them in float32: r = 4; otherwise r = c) and at c bytes for the projections' outputs:
  per layer and token, at hidden size H, FFN size F, `heads` query and `kv` key/value heads of d:
    two norms, each its input, normalised value and output: 2 * 3H * r
    attention (the fused scaled-dot-product kernel): q, k and v, (heads + 2 kv) * d * c; its output
        and the copy reshaped for the output projection, 2 * heads * d * c; its log-sum-exp, 4 * heads
    FFN: gated (SwiGLU) its gate and up outputs, the activation and their product, 4F * c;
        plain, its pre-activation and activation, 2F * c
  a decoder's additive attention mask, b * s^2 * r, once for all layers
  the head, for each exit one pass trains (all-exits: every depth of the pool at the draw's width;
      one otherwise), on every token of a decoder (on the first of a classifier's): the final norm,
      3H * r, and the logits over V outputs: their float32 log-probabilities the loss keeps (4V) and
      their own values until every exit's loss is taken (cV); and one exit's float32 logit gradient
      in the backward (4V)
  with gradient checkpointing each layer keeps only its input (H * r per token), and the layer
  recomputed during the backward holds one layer's worth as above.
The saved part (saved_activation_bytes) is what autograd keeps; the logits' own values, the
logit gradient and the recomputed layer are the transient part (transient_activation_bytes).
Not counted: the CUDA context and the allocator's fragmentation (leave a few GB free), dropout
masks (one byte per element of each dropout; the decoders default to none), eager attention's
probabilities (b * heads * s^2 per layer: the estimate assumes the fused kernel), the data.
tests/test_memory.py checks the parameters against built models and the activations against
torch's own count of the tensors saved for the backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..models.cost import TransformerShape

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class TrainingPlan:
    """How the full model would be trained, as far as memory goes."""

    strategy: str  # single | ddp | fsdp (trainer.strategy, auto resolved)
    world_size: int
    precision: str  # fp32 | bf16 | fp16 (trainer.precision, auto resolved)
    gradient_checkpointing: bool
    cpu_offload: bool  # fsdp: parameters, gradients and optimizer states kept in host memory
    batch_size: int  # sequences per rank in one draw
    seq_len: int  # tokens per sequence
    exits: int = 1  # heads one forward pass trains (all-exits: the depths of the pool at a width)

    def check(self) -> None:
        """What the trainer's own checks do not cover: the ranks the estimate assumes."""
        if self.strategy == "single" and self.world_size > 1:
            raise UserError(f"trainer.strategy=single runs one process, not memory.world_size={self.world_size}: "
                            "use trainer.strategy=ddp or fsdp (or auto)")
        if self.cpu_offload and self.strategy != "fsdp":
            raise UserError(f"trainer.fsdp_cpu_offload=true needs trainer.strategy=fsdp (got {self.strategy})")


@dataclass(frozen=True)
class MemoryLine:
    name: str
    bytes: float
    note: str
    on_host: bool = False  # in the host's memory (fsdp's CPU offload), not the accelerator's


@dataclass(frozen=True)
class MemoryEstimate:
    plan: TrainingPlan
    parameters: int  # of the full model
    lines: list[MemoryLine]

    @property
    def device_bytes(self) -> float:
        return sum(line.bytes for line in self.lines if not line.on_host)

    @property
    def host_bytes(self) -> float:
        return sum(line.bytes for line in self.lines if line.on_host)

    def of(self, name: str) -> float:
        return sum(line.bytes for line in self.lines if line.name == name)


def layer_activation_bytes_per_token(shape: TransformerShape, compute: int, residual: int) -> float:
    """What one layer keeps for the backward, per token (the module docstring's per-layer terms)."""
    norms = 2 * 3 * shape.hidden * residual
    attention = ((shape.heads + 2 * shape.kv_heads) * shape.head_dim + 2 * shape.heads * shape.head_dim) * compute + 4 * shape.heads
    ffn = (4 if shape.gated_ffn else 2) * shape.ffn * compute
    return norms + attention + ffn


def _precisions(plan: TrainingPlan) -> tuple[int, int]:
    """(compute, residual) bytes per element: autocast (single, ddp in bf16 or fp16) keeps the
    residual stream and the norms in float32; fsdp's policy runs the whole model in the compute precision."""
    compute = PRECISION_BYTES[plan.precision]
    return compute, 4 if compute < 4 and plan.strategy != "fsdp" else compute


def saved_activation_bytes(shape: TransformerShape, plan: TrainingPlan) -> float:
    """What autograd keeps for the backward of one draw, at the end of its forward (without
    gradient checkpointing's recomputed layer, which exists only in the backward)."""
    compute, residual = _precisions(plan)
    tokens = plan.batch_size * plan.seq_len
    per_layer = shape.hidden * residual if plan.gradient_checkpointing else layer_activation_bytes_per_token(shape, compute, residual)
    mask = plan.batch_size * plan.seq_len ** 2 * residual if shape.causal else 0
    head_tokens = tokens if shape.causal else plan.batch_size
    head = head_tokens * plan.exits * (3 * shape.hidden * residual + 4 * shape.outputs)
    return tokens * shape.layers * per_layer + mask + head


def transient_activation_bytes(shape: TransformerShape, plan: TrainingPlan) -> float:
    """What lives beside the saved tensors at the peak: every exit's logits until the losses are
    taken and one exit's float32 logit gradient, and with checkpointing the recomputed layer."""
    compute, residual = _precisions(plan)
    tokens = plan.batch_size * plan.seq_len
    head_tokens = tokens if shape.causal else plan.batch_size
    recomputed = tokens * layer_activation_bytes_per_token(shape, compute, residual) if plan.gradient_checkpointing else 0
    return head_tokens * shape.outputs * (plan.exits * compute + 4) + recomputed


def activation_bytes(shape: TransformerShape, plan: TrainingPlan) -> float:
    return saved_activation_bytes(shape, plan) + transient_activation_bytes(shape, plan)


def estimate_memory(shape: TransformerShape, plan: TrainingPlan) -> MemoryEstimate:
    """Bytes per rank of training the full model of `shape` as `plan` says (module docstring)."""
    plan.check()
    P, Pl, ranks = shape.parameters, shape.layer_parameters, plan.world_size
    Pr = P - shape.layers * Pl
    compute = PRECISION_BYTES[plan.precision]
    lines: list[MemoryLine] = []
    if plan.strategy == "fsdp":
        host = plan.cpu_offload
        where = "in host memory (CPU offload)" if host else f"sharded over {ranks} ranks"
        lines += [
            MemoryLine("parameters", 4 * P / ranks, f"float32, {where}" + ("; the master weights" if compute < 4 else ""), host),
            MemoryLine("gradients", 4 * P / ranks, f"float32, {where}", host),
            MemoryLine("optimizer", 8 * P / ranks, f"AdamW's two float32 states, {where}", host),
            MemoryLine("gathered parameters", compute * (Pr + 2 * Pl), f"{plan.precision}: the root's (embeddings, head) and two layers' in flight"),
            MemoryLine("gathered gradients", compute * (Pr + Pl), f"{plan.precision}: the root's and one layer's before their reduce-scatter"),
        ]
    else:
        lines += [
            MemoryLine("parameters", 4 * P, "float32" + ("; the master weights" if compute < 4 else "")),
            MemoryLine("gradients", 4 * P, "float32"),
            MemoryLine("optimizer", 8 * P, "AdamW's two float32 states"),
        ]
        if compute < 4:
            lines.append(MemoryLine("weight casts", compute * P, f"autocast's {plan.precision} casts of the weights, kept for the backward (at most)"))
        if plan.strategy == "ddp":
            lines.append(MemoryLine("gradient buckets", 4 * P, "DistributedDataParallel's float32 buckets"))
    checkpointing = "checkpointed (layer inputs, one layer recomputed)" if plan.gradient_checkpointing else "every layer's saved tensors"
    exits = f"{plan.exits} exits" if plan.exits > 1 else "1 exit"
    lines.append(MemoryLine("activations", activation_bytes(shape, plan), f"{plan.batch_size} x {plan.seq_len} tokens, {checkpointing}, {exits}"))
    return MemoryEstimate(plan, P, lines)
