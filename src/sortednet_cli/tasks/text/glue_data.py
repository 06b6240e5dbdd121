"""GLUE TSV readers and metrics, for the original GLUE files and their HF-style copies.

Each task names the header columns its texts and label may sit in, original GLUE name first
(MRPC's "#1 String", QQP's "is_duplicate", MNLI's "gold_label", STS-B's "score") and the
HF-style name second ("sentence1", "label", ...). CoLA's original files have no header: a file
whose first line names none of the task's columns is read as CoLA's four columns (source,
label, original annotation, sentence).

Labels. A classification label cell is accepted either as it appears in the original GLUE
files (the task's `label_set`: "entailment", "not_entailment", "0", "1", ...) or as an integer
id 0..n-1 (HF style). `label_set` is ordered as the HF `datasets` GLUE configs number their
classes (MNLI: entailment, neutral, contradiction; QNLI and RTE: entailment, not_entailment),
so both forms give the same id. "-1", which HF writes for rows without a label, is refused:
only labelled files can be evaluated. STS-B's score is read as a float, unscaled (0..5).

Files are read with the csv module, tab-delimited and without quoting (GLUE text holds
unbalanced quotes), as UTF-8 with an optional byte-order mark (MRPC's header carries one).
Texts are stripped: GLUE's SST-2 sentences end with a space.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ...errors import UserError
from ..base import Metric

Values = Union[Sequence[float], torch.Tensor]


@dataclass(frozen=True)
class GlueSpec:
    """What a GLUE task's files look like and how it is scored."""

    name: str
    first_text_columns: tuple[str, ...]  # header names the (first) text may have
    second_text_columns: Optional[tuple[str, ...]]  # None: a single-sentence task
    label_columns: tuple[str, ...]
    label_set: Optional[tuple[str, ...]]  # class names as GLUE writes them, ids 0..n-1; None: regression
    metric: str  # the headline metric
    extra_metrics: tuple[str, ...] = ()
    headerless_columns: Optional[tuple[int, int]] = None  # (text, label) fields of a file without a header (CoLA)
    val_files: tuple[str, ...] = ("dev.tsv", "validation.tsv")
    test_files: tuple[str, ...] = ("test.tsv",)

    @property
    def is_pair(self) -> bool:
        return self.second_text_columns is not None

    @property
    def is_regression(self) -> bool:
        return self.label_set is None

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(self.first_text_columns + (self.second_text_columns or ()) + self.label_columns)


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueSpec] = {
    spec.name: spec
    for spec in (
        GlueSpec("cola", ("sentence",), None, ("label",), BINARY, "matthews", ("accuracy",), headerless_columns=(3, 1)),
        GlueSpec("sst2", ("sentence",), None, ("label",), BINARY, "accuracy"),
        GlueSpec("mrpc", ("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label"), BINARY, "f1", ("accuracy",)),
        GlueSpec("qqp", ("question1",), ("question2",), ("is_duplicate", "label"), BINARY, "f1", ("accuracy",)),
        GlueSpec("stsb", ("sentence1",), ("sentence2",), ("score", "label"), None, "pearson", ("spearman",)),
        GlueSpec(
            "mnli",
            ("sentence1", "premise"),
            ("sentence2", "hypothesis"),
            ("gold_label", "label"),
            ("entailment", "neutral", "contradiction"),
            "accuracy",
            val_files=("dev_matched.tsv", "validation_matched.tsv"),
            test_files=("test_matched.tsv", "test.tsv"),
        ),
        GlueSpec("qnli", ("question",), ("sentence",), ("label",), ENTAILMENT, "accuracy"),
        GlueSpec("rte", ("sentence1",), ("sentence2",), ("label",), ENTAILMENT, "accuracy"),
        GlueSpec("wnli", ("sentence1",), ("sentence2",), ("label",), BINARY, "accuracy"),
    )
}

# Every header name any task reads a text from: telling a one-text file from a pair file.
TEXT_COLUMNS = frozenset(name for spec in GLUE_TASKS.values() for name in spec.first_text_columns + (spec.second_text_columns or ()))


def glue_spec(name: str) -> GlueSpec:
    """The task by name; "SST-2" and "STS-B" are accepted as GLUE spells them."""
    spec = GLUE_TASKS.get(name.lower().replace("-", ""))
    if spec is None:
        raise UserError(f"unknown GLUE task '{name}': known tasks are {', '.join(GLUE_TASKS)}")
    return spec


def num_labels(spec: GlueSpec) -> int:
    """The classifier head's width: one output for STS-B's regression."""
    return 1 if spec.label_set is None else len(spec.label_set)


def split_file(root: Path, spec: GlueSpec, split: str) -> Path:
    """The file of a split ('train', 'val' or 'test'), under either GLUE's or HF's name."""
    names = {"train": ("train.tsv",), "val": spec.val_files, "test": spec.test_files}.get(split)
    if names is None:
        raise UserError(f"unknown split '{split}': use train, val or test")
    for name in names:
        if (root / name).is_file():
            return root / name
    folder = root if root.is_dir() else f"{root} (no such folder)"
    raise UserError(f"no {spec.name} {split} file in {folder}: tried {', '.join(names)}")


@dataclass
class GlueExamples:
    text_a: list[str]
    text_b: Optional[list[str]]  # None for single-sentence tasks
    labels: Union[list[int], list[float]]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class _Columns:
    """Field positions of a file's texts and label."""

    first_text: int
    second_text: Optional[int]
    label: int

    @property
    def width(self) -> int:
        return 1 + max(self.first_text, self.label, -1 if self.second_text is None else self.second_text)


def read_split(path: Path, spec: GlueSpec) -> GlueExamples:
    """Every row of a GLUE TSV file; any malformed input is a one-line UserError naming it."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                return _read_rows(path, spec, _numbered_rows(reader))
            except csv.Error as error:
                raise UserError(f"{path}:{reader.line_num}: {error}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def _numbered_rows(reader) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line."""
    for fields in reader:
        if fields:
            yield reader.line_num, fields


def _read_rows(path: Path, spec: GlueSpec, rows: Iterator[tuple[int, list[str]]]) -> GlueExamples:
    first_row = next(rows, None)
    if first_row is None:
        raise UserError(f"{path} is empty")
    columns, has_header = _columns(path, spec, first_row[1])
    if not has_header:
        rows = _chain_first(first_row, rows)
    parse_label = _label_parser(path, spec)
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list = []
    for line, fields in rows:
        if len(fields) < columns.width:
            raise UserError(f"{path}:{line}: {len(fields)} tab-separated field(s), {spec.name} needs {columns.width}")
        text_a.append(fields[columns.first_text].strip())
        if columns.second_text is not None:
            text_b.append(fields[columns.second_text].strip())
        labels.append(parse_label(fields[columns.label].strip(), line))
    if not labels:
        raise UserError(f"{path} has a header but no rows")
    return GlueExamples(text_a, text_b if spec.is_pair else None, labels)


def _chain_first(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


def _columns(path: Path, spec: GlueSpec, first_row: list[str]) -> tuple[_Columns, bool]:
    """Where the texts and label are, and whether the first row is a header."""
    header = [cell.strip() for cell in first_row]
    if spec.headerless_columns is not None and not spec.column_names.intersection(header):
        text, label = spec.headerless_columns
        return _Columns(text, None, label), False

    def position(names: Optional[tuple[str, ...]]) -> Optional[int]:
        return next((header.index(name) for name in names or () if name in header), None)

    first, second, label = position(spec.first_text_columns), position(spec.second_text_columns), position(spec.label_columns)
    shown = ", ".join(header)
    if spec.is_pair and (first is None or second is None) and len(TEXT_COLUMNS.intersection(header)) < 2:
        raise UserError(
            f"{path}: {spec.name} needs two text columns ({_either(spec.first_text_columns)} and "
            f"{_either(spec.second_text_columns)}) but the file has at most one (header: {shown})"
        )
    for role, names, found in (
        ("text" if not spec.is_pair else "first text", spec.first_text_columns, first),
        ("second text", spec.second_text_columns, second),
        ("label", spec.label_columns, label),
    ):
        if names is not None and found is None:
            unlabelled = "; GLUE's own test files have no labels" if role == "label" else ""
            raise UserError(f"{path}: missing the {spec.name} {role} column {_either(names)} (header: {shown}){unlabelled}")
    return _Columns(first, second, label), True


def _either(names: tuple[str, ...]) -> str:
    return " or ".join(f"'{name}'" for name in names)


def _label_parser(path: Path, spec: GlueSpec):
    """label cell, line -> class id (or STS-B score)."""
    if spec.label_set is None:

        def parse_score(value: str, line: int) -> float:
            try:
                score = float(value)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise UserError(f"{path}:{line}: {spec.name} score '{value}' is not a number")
            return score

        return parse_score

    id_texts = tuple(str(index) for index in range(len(spec.label_set)))
    ids = {text: index for index, text in enumerate(id_texts)} | {name: index for index, name in enumerate(spec.label_set)}
    allowed = ", ".join(spec.label_set)
    if spec.label_set != id_texts:
        allowed += f" (or their ids {', '.join(id_texts)})"

    def parse_class(value: str, line: int) -> int:
        index = ids.get(value)
        if index is None:
            unlabelled = "; -1 marks a row without a label" if value == "-1" else ""
            raise UserError(f"{path}:{line}: {spec.name} label '{value}' is not one of {allowed}{unlabelled}")
        return index

    return parse_class


# -- metrics ----------------------------------------------------------------------------------


def _as_list(values: Values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def _paired(predictions: Values, labels: Values) -> tuple[list, list]:
    predictions, labels = _as_list(predictions), _as_list(labels)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return predictions, labels


def _clamped(value: float) -> float:
    """Rounding can take a correlation a hair past +-1, out of its metric's range."""
    return max(-1.0, min(1.0, value))


def accuracy(predictions: Values, labels: Values) -> float:
    predictions, labels = _paired(predictions, labels)
    return sum(p == t for p, t in zip(predictions, labels)) / max(1, len(labels))


def binary_f1(predictions: Values, labels: Values) -> float:
    """F1 of class 1 (MRPC's paraphrases, QQP's duplicates); 0 when nothing is predicted or true."""
    predictions, labels = _paired(predictions, labels)
    true_positives = sum(p == 1 and t == 1 for p, t in zip(predictions, labels))
    false_positives = sum(p == 1 and t != 1 for p, t in zip(predictions, labels))
    false_negatives = sum(p != 1 and t == 1 for p, t in zip(predictions, labels))
    if true_positives == 0:
        return 0.0
    return 2 * true_positives / (2 * true_positives + false_positives + false_negatives)


def matthews_correlation(predictions: Values, labels: Values) -> float:
    """Matthews correlation (multi-class form, Gorodkin 2004; the binary one for CoLA); 0 when a
    side is constant, as scikit-learn has it."""
    predictions, labels = _paired(predictions, labels)
    total = len(labels)
    correct = sum(p == t for p, t in zip(predictions, labels))
    predicted, true = Counter(predictions), Counter(labels)
    covariance = correct * total - sum(predicted[k] * true[k] for k in predicted)
    predicted_spread = total * total - sum(n * n for n in predicted.values())
    true_spread = total * total - sum(n * n for n in true.values())
    if predicted_spread == 0 or true_spread == 0:
        return 0.0
    return _clamped(covariance / math.sqrt(predicted_spread * true_spread))


def pearson_correlation(x: Values, y: Values) -> float:
    """Pearson's r; 0 when a side is constant (an untrained regressor), not NaN, so that a grid
    can still compare it."""
    x, y = _paired(x, y)
    if not x:
        return 0.0
    mean_x, mean_y = math.fsum(x) / len(x), math.fsum(y) / len(y)
    dx = [v - mean_x for v in x]
    dy = [v - mean_y for v in y]
    spread_x, spread_y = math.fsum(v * v for v in dx), math.fsum(v * v for v in dy)
    if spread_x == 0 or spread_y == 0:
        return 0.0
    return _clamped(math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(spread_x * spread_y))


def spearman_correlation(x: Values, y: Values) -> float:
    """Pearson's r of the ranks, tied values sharing their average rank."""
    x, y = _paired(x, y)
    return pearson_correlation(_average_ranks(x), _average_ranks(y))


def _average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in order[start : end + 1]:
            ranks[position] = (start + end) / 2 + 1
        start = end + 1
    return ranks


METRICS = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews": matthews_correlation,
    "pearson": pearson_correlation,
    "spearman": spearman_correlation,
}
METRIC_RANGES = {"accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "matthews": (-1.0, 1.0), "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0)}


def glue_metric(spec: GlueSpec) -> Metric:
    lower, upper = METRIC_RANGES[spec.metric]
    return Metric(spec.metric, higher_is_better=True, lower=lower, upper=upper)


class GlueMeter:
    """Keeps every prediction on the device and reads them back once: F1 and the correlations
    need them all, not a running count."""

    def __init__(self, spec: GlueSpec):
        self.spec = spec
        self.predictions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """outputs: logits [B, num_labels], or scores [B, 1] or [B] for STS-B."""
        predictions = outputs.reshape(len(targets)).float() if self.spec.is_regression else outputs.argmax(-1)
        self.predictions.append(predictions.detach())
        self.targets.append(targets.detach().reshape(-1))

    def values(self) -> dict[str, float]:
        """The headline metric first, then the extras: {"f1": ..., "accuracy": ...}."""
        predictions = torch.cat(self.predictions).tolist() if self.predictions else []
        targets = torch.cat(self.targets).tolist() if self.targets else []
        return {name: METRICS[name](predictions, targets) for name in (self.spec.metric, *self.spec.extra_metrics)}

    def value(self) -> float:
        return self.values()[self.spec.metric]

    def details(self) -> dict[str, float]:
        """The extras alone (the grid's columns beside the headline)."""
        values = self.values()
        return {name: values[name] for name in self.spec.extra_metrics}
