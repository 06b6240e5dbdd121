"""Typed config schemas, registered in Hydra's ConfigStore.

The YAML files in conf/ sit on top of these dataclasses, so a misspelled key or a value of the
wrong type fails while the config is composed, with the key named. The dataclasses (these, and
each plug-in's own) hold the defaults: an option's YAML file sets only what differs from them,
and tests/test_config_reference.py checks the README's config reference against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Strategy(str, Enum):
    auto = "auto"  # single for one process, ddp under torchrun
    single = "single"
    ddp = "ddp"  # torch's DistributedDataParallel
    fsdp = "fsdp"  # FSDP2: parameters, gradients and optimizer state sharded over the ranks


class Precision(str, Enum):
    auto = "auto"  # bf16 on CUDA, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"  # autocast in bfloat16 (fsdp: bf16 parameters and compute, float32 reduction)
    fp16 = "fp16"  # autocast in float16 with a loss scaler (CUDA only)


class Distill(str, Enum):
    none = "none"
    inplace = "inplace"


class Objective(str, Enum):
    sampled = "sampled"  # each draw trains the one sub-model the sampler picks
    all_exits = "all_exits"  # each draw trains every depth of the pool at the drawn width, one pass


class BnMode(str, Enum):
    recalibrate = "recalibrate"
    running = "running"


class EvalMethod(str, Enum):
    shared = "shared"
    naive = "naive"


class CostName(str, Enum):
    mflops = "mflops"
    params = "params"
    latency = "latency"


class SubKind(str, Enum):
    one = "one"
    selected = "selected"


@dataclass
class PoolConfig:
    name: str = MISSING
    widths: List[float] = MISSING
    # "all" (every per-stage combination), or a list whose entries are an int k (k blocks in
    # every stage), a per-stage list like [1, 2, 2], or "max" (every stage at full depth).
    depths: Any = MISSING


@dataclass
class SamplerConfig:
    name: str = "uniform"
    weights: Optional[List[float]] = None
    alpha: Optional[float] = None


@dataclass
class TrainerConfig:
    epochs: int = 200
    batch_size: int = 128
    grad_accum: int = 1  # draws (sub-model + mini-batch) accumulated per optimizer step
    accum_same_batch: bool = False  # true: the draws of a step share one mini-batch
    seed: int = 0
    device: Device = Device.auto
    # How the ranks share the training (engine/strategy.py); auto: single, or ddp under torchrun.
    strategy: Strategy = Strategy.auto
    precision: Precision = Precision.auto
    fsdp_cpu_offload: bool = False  # strategy=fsdp on CUDA: sharded parameters, gradients and optimizer state in CPU memory
    # Recompute each layer's activations in the backward instead of keeping them (the families that have it).
    gradient_checkpointing: bool = False
    threads: int = 0  # CPU threads, 0 = torch's default
    stall_factor: float = 50.0  # warn when a step runs this many times the recent median...
    stall_seconds: float = 60.0  # ...and at least this long (0 turns the warning off)
    checkpoint_every: int = 1  # epochs
    log_every: int = 20  # steps
    # Clip the gradient norm of each optimizer step (after all its draws) to this; null: no clipping.
    clip_grad_norm: Optional[float] = None
    # Stop after this many optimizer steps (the schedule is laid out over them); null: epochs decide.
    max_steps: Optional[int] = None
    # What each draw trains. sampled: the sub-model the sampler picks; all_exits: a draw picks a
    # width and one forward pass trains the mean loss of every depth of the pool at that width
    # (Sorted LLaMA's scheme; metrics.csv gets one row per exit).
    objective: Objective = Objective.sampled
    # How the all-exits objective trains its exits (LayerSkip's early-exit loss; objective=all_exits
    # only). The exits' weights: uniform (the plain mean), rising (in proportion to the exit's
    # depth), or a list with one weight per exit of a width, shallowest first.
    exit_weights: Any = "uniform"
    # The fraction of the training steps over which the early exits are switched on one by one,
    # deepest first (LayerSkip's gradual curriculum); 0: every exit trains from the first step.
    exit_curriculum: float = 0.0
    # Layer dropout rising with depth: block i of n is skipped (the identity) in a draw with
    # probability layer_dropout * i / (n - 1), in training only; a pure function of (seed, step, draw).
    layer_dropout: float = 0.0
    # Exit self-distillation: every exit but the deepest also learns the deepest exit's detached
    # next-token distribution (the task's soft-target loss at exit_distill_temperature), this weight
    # times its soft loss added to its own loss.
    exit_distill_alpha: float = 0.0
    exit_distill_temperature: float = 1.0
    # inplace: the largest sub-model of each step teaches the step's other draws (same batch).
    distill: Distill = Distill.none
    distill_temperature: float = 1.0
    distill_alpha: float = 0.0  # the weight of the labels in the other draws' loss
    # Run eval-grid and select at the end, into the same run directory.
    eval_grid: bool = True


@dataclass
class LoggerConfig:
    name: str = "csv"
    project: str = "sortednet"
    entity: Optional[str] = None
    run_name: Optional[str] = None


@dataclass
class EvalConfig:
    bn: BnMode = BnMode.recalibrate
    calib_examples: int = 2000  # training examples norm statistics are recalibrated on
    batch_size: int = 500
    method: EvalMethod = EvalMethod.shared
    latency: bool = True
    latency_repeats: int = 5
    # A number, or the run directory of another train run whose full model is the baseline;
    # null: this checkpoint's own full model.
    baseline: Optional[str] = None


@dataclass
class SelectConfig:
    # An absolute bar in the metric's own units: a floor for a higher-is-better metric (accuracy),
    # a ceiling for a lower-is-better one (a language model's loss); null: only min_relative.
    metric_bar: Optional[float] = None
    min_relative: Optional[float] = 0.96
    cost: CostName = CostName.mflops
    budget: Optional[float] = None


@dataclass
class SubConfig:
    kind: SubKind = SubKind.one
    width: float = 1.0
    depth: Any = "max"
    # sub=selected: the selected.json to export (default: the one beside the checkpoint).
    file: Optional[str] = None


# model, data, optim and sched are typed by the schema their chosen option lists first (each
# family, task, optimizer and schedule brings its own; see sortednet_cli.registry).
@dataclass
class TrainConfig:
    model: Any = MISSING
    pool: PoolConfig = MISSING
    sampler: SamplerConfig = MISSING
    data: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    # A train run directory or a last.pt to continue from.
    resume: Optional[str] = None


@dataclass
class EvalGridConfig:
    # A train run directory or .pt; null: the newest train run under outputs/.
    checkpoint: Optional[str] = None
    # null: the checkpoint's own pool.
    pool: Optional[PoolConfig] = None
    # The checkpoint's data settings, with data.* overrides from the command line on top
    # (checked against the checkpoint's own data schema); data=<option> replaces them.
    data: Any = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    device: Device = Device.auto


@dataclass
class SelectCommandConfig:
    # A grid.csv, or a directory holding one; null: the newest grid under outputs/.
    grid: Optional[str] = None
    select: SelectConfig = field(default_factory=SelectConfig)


@dataclass
class ExportConfig:
    checkpoint: Optional[str] = None
    sub: SubConfig = field(default_factory=SubConfig)
    data: Any = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: Device = Device.auto


@dataclass
class BenchSettings:
    quick: bool = False
    # Each comparison alternates its two sides `rounds` times; medians are reported.
    rounds: int = 5
    steps: int = 20  # training steps per timed segment
    batch_size: int = 128
    workers: int = 2  # DataLoader workers of the reference loop
    eval_examples: int = 500
    calib_examples: int = 500
    grid_rounds: int = 2


@dataclass
class BenchConfig:
    model: Any = MISSING
    pool: PoolConfig = MISSING
    data: Any = MISSING
    bench: BenchSettings = field(default_factory=BenchSettings)
    # The engine's side of the bench trains with them (engine/bench.py: one draw per step of
    # bench.batch_size, at bench's seed); composed so that a model family's choice applies.
    optim: Any = None
    sched: Any = None
    trainer: Any = None
    device: Device = Device.auto
    threads: int = 0
    seed: int = 0


@dataclass
class MemorySettings:
    """describe's memory estimate (engine/memory.py): the ranks a run would train on; the rest is
    the trainer's (trainer.strategy, precision, gradient_checkpointing, fsdp_cpu_offload, batch_size)."""

    world_size: int = 1  # torchrun's nodes x processes per node; trainer.batch_size is split over them
    # The estimate alone: no model built, no pool table (a 7B model's table builds it in float32 on the CPU).
    only: bool = False


@dataclass
class DescribeConfig:
    model: Any = MISSING
    pool: PoolConfig = MISSING
    data: Any = MISSING  # the task's example input is what FLOPs are counted on
    memory: MemorySettings = field(default_factory=MemorySettings)
    # Composed so that a model family's choice of them (model/<family>.yaml) and an experiment apply.
    optim: Any = None
    sched: Any = None
    trainer: Any = None
    eval: Any = None  # unused here: an experiment may set it


@dataclass
class ReportConfig:
    # A multirun directory of train jobs; null (and no runs): the newest under outputs/multirun/train/.
    sweep_dir: Optional[str] = None
    # Train run directories to compare instead of a sweep; the report goes to this command's run dir.
    runs: Optional[List[str]] = None
    # Loss-curve panels: the widths cut into this many groups, plus one panel for all draws.
    width_buckets: int = 4
    # Moving-average window of the loss curves, in draws; null: a twentieth of each curve.
    smooth: Optional[int] = None


class DecodeMode(str, Enum):
    full = "full"  # the whole model, greedy or sampled
    exit = "exit"  # one fixed exit's own language model
    early_exit = "early_exit"  # per token, the first exit confident enough (lossy)
    speculative = "speculative"  # the first layers draft, the full model verifies (lossless: greedy, or sampled by the speculative-sampling rule)


@dataclass
class GenerateSettings:
    mode: DecodeMode = DecodeMode.full
    max_new_tokens: int = 200
    temperature: float = 0.0  # 0: greedy; mode=early_exit is greedy only
    top_k: Optional[int] = None
    seed: int = 0
    exit: Optional[int] = None  # mode=exit: the exit layer (null: half the depth)
    threshold: float = 0.9  # mode=early_exit: the confidence (top probability) that stops a token
    draft_exit: Any = None  # mode=speculative: the layers that draft, auto (chosen every round), or null (a quarter of the depth)
    draft_len: Any = "auto"  # tokens drafted per verification, or auto (chosen every round from measured cost and acceptance)
    draft_width: int = 1  # 1: a chain of drafts; more: a tree, this many drafts per level and draft_len levels (greedy only)
    draft_stop: float = 0.0  # > 0 (chains): a round stops drafting where the exit's top probability is below this; draft_len is then the most
    chat: bool = False  # render the prompt as a user turn through the run's instruction template (stops at end of sequence)
    system: Optional[str] = None  # chat=true: a system turn before the prompt


@dataclass
class GenerateConfig:
    # A train run directory or .pt of model=llama; null: the newest train run under outputs/.
    checkpoint: Optional[str] = None
    prompt: str = "ROMEO:"
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    device: Device = Device.cpu
    threads: int = 0  # CPU threads, 0 = torch's default


@dataclass
class BenchDecodeSettings:
    prompts: List[str] = field(default_factory=list)  # empty: prompt_count windows of the validation text
    prompt_count: int = 4
    prompt_tokens: int = 32
    max_new_tokens: int = 200
    exits: Optional[List[int]] = None  # each exit alone; null: every exit
    thresholds: List[float] = field(default_factory=lambda: [0.95, 0.9, 0.8])
    draft_exits: Optional[List[int]] = None  # null: about a quarter, a third and half of the depth
    draft_lens: List[Any] = field(default_factory=lambda: [2, 4, 8, "auto"])
    draft_widths: List[int] = field(default_factory=lambda: [1, 3])  # each setting as a chain (1) and as a tree of each width
    draft_stops: List[float] = field(default_factory=lambda: [0.0, 0.5])  # each chain at each draft_stop (0: drafts of the full length)
    auto: bool = True  # also draft_exit=auto with draft_len=auto, set against the best fixed setting
    library_exits: Optional[List[int]] = None  # transformers' assistant_early_exit; null: the draft exits
    temperature: float = 0.0  # > 0: also full and self-speculative sampling at this temperature
    rounds: int = 1  # every row once per prompt per round, interleaved prompt by prompt; medians reported


@dataclass
class BenchDecodeConfig:
    checkpoint: Optional[str] = None
    bench: BenchDecodeSettings = field(default_factory=BenchDecodeSettings)
    device: Device = Device.cpu
    threads: int = 1  # decoding at batch 1: one thread is the honest CPU setting (stated in decode.json)


def register_configs() -> None:
    """The command schemas (plug-ins store theirs as they register)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # conf/trainer/default.yaml lists it first: typed, with the defaults, in every command that
    # composes a trainer (describe and bench too, where a model family may choose one).
    cs.store(group="schemas/trainer", name="default", node=TrainerConfig)
    cs.store(name="describe_schema", node=DescribeConfig)
    cs.store(name="eval_grid_schema", node=EvalGridConfig)
    cs.store(name="select_schema", node=SelectCommandConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="bench_schema", node=BenchConfig)
    cs.store(name="report_schema", node=ReportConfig)
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="bench_decode_schema", node=BenchDecodeConfig)
