"""GLUE readers on hand-written files of every layout, their errors, and the metrics."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from sortednet_cli.errors import UserError
from sortednet_cli.tasks.base import Metric
from sortednet_cli.tasks.text.glue_data import (
    GLUE_TASKS,
    GlueMeter,
    accuracy,
    binary_f1,
    glue_metric,
    glue_spec,
    matthews_correlation,
    num_labels,
    pearson_correlation,
    read_split,
    spearman_correlation,
    split_file,
)

SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def write(folder: Path, name: str, lines: list[str], encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse"
    "\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)

# task, file lines, expected (text_a, text_b, labels)
LAYOUTS = {
    "sst2 glue": (
        "sst2",
        ["sentence\tlabel", "it 's a charming journey . \t1", 'a "quoted mess \t0'],
        (["it 's a charming journey .", 'a "quoted mess'], None, [1, 0]),
    ),
    "cola glue, no header": (
        "cola",
        ["gj04\t1\t\tOur friends won't buy this analysis.", "gj04\t0\t*\tThey drank the pub dry \"."],
        (["Our friends won't buy this analysis.", 'They drank the pub dry ".'], None, [1, 0]),
    ),
    "cola hf": ("cola", ["sentence\tlabel\tidx", "The sailors rode the breeze.\t1\t0"], (["The sailors rode the breeze."], None, [1])),
    "mrpc glue, byte-order mark": (
        "mrpc",
        [
            "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            '1\t702876\t702977\tAmrozi accused his brother .\tReferring to him as only " the witness " .',
            "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's .",
        ],
        (["Amrozi accused his brother .", "Yucaipa owned Dominick 's ."], ['Referring to him as only " the witness " .', "Yucaipa bought Dominick 's ."], [1, 0]),
    ),
    "mrpc hf": ("mrpc", ["sentence1\tsentence2\tlabel\tidx", "a b\tc d\t1\t0"], (["a b"], ["c d"], [1])),
    "qqp glue": (
        "qqp",
        ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0"],
        (["Why are African-Americans so beautiful?"], ["Why are hispanics so beautiful?"], [0]),
    ),
    "qqp hf": ("qqp", ["question1\tquestion2\tlabel\tidx", "q1?\tq2?\t1\t7"], (["q1?"], ["q2?"], [1])),
    "qnli glue": (
        "qnli",
        ["index\tquestion\tsentence\tlabel", "0\tWhat came into force?\tThe law came into force.\tentailment", "1\tWho?\tNobody knows.\tnot_entailment"],
        (["What came into force?", "Who?"], ["The law came into force.", "Nobody knows."], [0, 1]),
    ),
    "qnli hf, integer labels": ("qnli", ["question\tsentence\tlabel\tidx", "q\ts\t1\t0", "q2\ts2\t0\t1"], (["q", "q2"], ["s", "s2"], [1, 0])),
    "rte glue": (
        "rte",
        ["index\tsentence1\tsentence2\tlabel", "0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment"],
        (["Dana Reeve died."], ["Christopher Reeve had an accident."], [1]),
    ),
    "mnli glue": (
        "mnli",
        [
            MNLI_HEADER,
            "0\t31193\t31193n\tgovernment\t( ( parse\t( parse\t(ROOT)\t(ROOT)\tConceptually cream skimming.\tProduct and geography.\tneutral\t\t\t\t\tneutral",
            "1\t101457\t101457e\ttelephone\tp\tp\tp\tp\tyou know during the season\tYou lose the things.\tentailment\tentailment\t\t\t\tentailment",
            "2\t134793\t134793c\tfiction\tp\tp\tp\tp\tOne of our number.\tWe have no one free.\tcontradiction\t\t\t\t\tcontradiction",
        ],
        (
            ["Conceptually cream skimming.", "you know during the season", "One of our number."],
            ["Product and geography.", "You lose the things.", "We have no one free."],
            [1, 0, 2],
        ),
    ),
    "mnli hf": ("mnli", ["premise\thypothesis\tlabel\tidx", "p\th\t2\t0"], (["p"], ["h"], [2])),
    "stsb glue": (
        "stsb",
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000",
            "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\tA man is playing a flute.\t3.800",
        ],
        (["A plane is taking off.", "A man is playing a flute."], ["An air plane is taking off.", "A man is playing a flute."], [5.0, 3.8]),
    ),
    "stsb hf": ("stsb", ["sentence1\tsentence2\tlabel\tidx", "a\tb\t0.25\t0"], (["a"], ["b"], [0.25])),
    "wnli glue": ("wnli", ["index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin.\tThe pin had a hole.\t1"], (["I stuck a pin."], ["The pin had a hole."], [1])),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_glue_layout_reads(tmp_path, layout):
    task, lines, (text_a, text_b, labels) = LAYOUTS[layout]
    examples = read_split(write(tmp_path, "train.tsv", lines), glue_spec(task))
    assert (examples.text_a, examples.text_b, examples.labels) == (text_a, text_b, labels)
    assert len(examples) == len(labels)


def test_blank_lines_and_crlf_endings_are_read(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\r\ngood \t1\r\n\r\nbad\t0\r\n\r\n")
    examples = read_split(path, glue_spec("sst2"))
    assert examples.text_a == ["good", "bad"] and examples.labels == [1, 0]


def test_task_names_and_label_counts():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert glue_spec("SST-2") is GLUE_TASKS["sst2"] and glue_spec("STS-B") is GLUE_TASKS["stsb"]
    assert [num_labels(glue_spec(name)) for name in ("stsb", "sst2", "mnli", "qnli")] == [1, 2, 3, 2]
    with pytest.raises(UserError, match="unknown GLUE task 'imdb': known tasks are cola, sst2, mrpc"):
        glue_spec("imdb")


def test_split_files_under_glue_and_hf_names(tmp_path):
    sst2, mnli = glue_spec("sst2"), glue_spec("mnli")
    for name in ("train.tsv", "validation.tsv", "test.tsv", "dev_matched.tsv"):
        write(tmp_path, name, ["x"])
    assert split_file(tmp_path, sst2, "train") == tmp_path / "train.tsv"
    assert split_file(tmp_path, sst2, "val") == tmp_path / "validation.tsv"
    assert split_file(tmp_path, sst2, "test") == tmp_path / "test.tsv"
    assert split_file(tmp_path, mnli, "val") == tmp_path / "dev_matched.tsv"
    write(tmp_path, "dev.tsv", ["x"])
    assert split_file(tmp_path, sst2, "val") == tmp_path / "dev.tsv"  # GLUE's name first


def test_missing_split_files_name_the_folder_and_the_names_tried(tmp_path):
    with pytest.raises(UserError, match=rf"no sst2 val file in {tmp_path}: tried dev.tsv, validation.tsv"):
        split_file(tmp_path, glue_spec("sst2"), "val")
    with pytest.raises(UserError, match="tried dev_matched.tsv, validation_matched.tsv"):
        split_file(tmp_path, glue_spec("mnli"), "val")
    with pytest.raises(UserError, match=r"nowhere \(no such folder\): tried train.tsv"):
        split_file(tmp_path / "nowhere", glue_spec("rte"), "train")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        split_file(tmp_path, glue_spec("rte"), "dev")


BAD_INPUTS = {
    "empty file": ("sst2", [], ["is empty"]),
    "header only": ("sst2", ["sentence\tlabel"], ["has a header but no rows"]),
    "glue test file without labels": ("sst2", ["index\tsentence", "0\tfine ."], ["label column 'label'", "header: index, sentence", "no labels"]),
    "missing text column": ("sst2", ["text\tlabel", "fine\t1"], ["sst2 text column 'sentence'", "header: text, label"]),
    "missing second text column": ("mrpc", ["sentence1\tquestion\tlabel", "a\tb\t1"], ["second text column '#2 String' or 'sentence2'"]),
    "label outside the set": ("sst2", ["sentence\tlabel", "fine\t1", "odd\t2"], [":3:", "label '2' is not one of 0, 1"]),
    "label name outside the set": (
        "mnli",
        ["sentence1\tsentence2\tlabel", "a\tb\tmaybe"],
        ["label 'maybe' is not one of entailment, neutral, contradiction (or their ids 0, 1, 2)"],
    ),
    "unlabelled hf row": ("qnli", ["question\tsentence\tlabel", "q\ts\t-1"], [":2:", "label '-1'", "without a label"]),
    "pair task, single-sentence file": ("rte", ["sentence\tlabel", "fine\t1"], ["rte needs two text columns ('sentence1' and 'sentence2')", "header: sentence, label"]),
    "too few fields": ("sst2", ["sentence\tlabel", "fine\t1", "no tab here"], [":3:", "1 tab-separated field(s), sst2 needs 2"]),
    "cola row too short": ("cola", ["gj04\t1\t\tfine", "gj04\t1"], [":2:", "2 tab-separated field(s), cola needs 4"]),
    "non-numeric score": ("stsb", ["sentence1\tsentence2\tscore", "a\tb\t4.5", "a\tb\thigh"], [":3:", "score 'high' is not a number"]),
    "nan score": ("stsb", ["sentence1\tsentence2\tlabel", "a\tb\tnan"], ["score 'nan' is not a number"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_one_line_user_errors_naming_the_file(tmp_path, case):
    task, lines, fragments = BAD_INPUTS[case]
    path = write(tmp_path, "bad.tsv", lines)
    with pytest.raises(UserError) as error:
        read_split(path, glue_spec(task))
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unreadable_files_are_user_errors(tmp_path):
    latin = write(tmp_path, "latin.tsv", ["sentence\tlabel", "café\t1"], encoding="latin-1")
    with pytest.raises(UserError, match="latin.tsv is not UTF-8 text"):
        read_split(latin, glue_spec("sst2"))
    with pytest.raises(UserError, match="cannot read .*missing.tsv"):
        read_split(tmp_path / "missing.tsv", glue_spec("sst2"))
    huge = write(tmp_path, "huge.tsv", ["sentence\tlabel", "fine\t1", "x" * 200_000 + "\t1"])
    with pytest.raises(UserError, match="huge.tsv:3: field larger than field limit"):
        read_split(huge, glue_spec("sst2"))


# -- metrics ----------------------------------------------------------------------------------


def test_accuracy_and_binary_f1_by_hand():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(torch.tensor([2, 1]), torch.tensor([2, 1])) == 1.0
    # tp 2, fp 1, fn 1: F1 = 2*2 / (2*2 + 1 + 1)
    assert binary_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(4 / 6)
    assert binary_f1([0, 0], [1, 0]) == 0.0 and binary_f1([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        accuracy([1, 0], [1, 0, 1])


def binary_mcc_reference(predictions, labels):
    tp = sum(p == 1 and t == 1 for p, t in zip(predictions, labels))
    tn = sum(p == 0 and t == 0 for p, t in zip(predictions, labels))
    fp = sum(p == 1 and t == 0 for p, t in zip(predictions, labels))
    fn = sum(p == 0 and t == 1 for p, t in zip(predictions, labels))
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def test_matthews_correlation():
    # tp 2, tn 1, fp 1, fn 1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert matthews_correlation([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(1 / 6)
    assert matthews_correlation([1, 0, 1], [1, 0, 1]) == 1.0
    assert matthews_correlation([0, 1, 0], [1, 0, 1]) == -1.0
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # constant predictions
    rng = random.Random(0)
    labels = [rng.randint(0, 1) for _ in range(200)]
    predictions = [t if rng.random() < 0.7 else 1 - t for t in labels]
    assert matthews_correlation(torch.tensor(predictions), torch.tensor(labels)) == pytest.approx(binary_mcc_reference(predictions, labels))


def test_pearson_by_hand():
    # dx = -1.5 -0.5 0.5 1.5, dy = -3 -1 0 4: r = 11 / sqrt(5 * 26)
    assert pearson_correlation([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert pearson_correlation([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert pearson_correlation([2.0, 2.0, 2.0], [1, 2, 3]) == 0.0  # a constant side
    assert pearson_correlation([], []) == 0.0
    x = [1e8 + 0.1 * i for i in range(1000)]
    assert -1.0 <= pearson_correlation(x, x) <= 1.0


def test_spearman_averages_tied_ranks():
    # ranks x = 1 2.5 2.5 4, y = 1 3 2 4: r = 4.5 / sqrt(4.5 * 5)
    assert spearman_correlation([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman_correlation([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # monotone
    rng = random.Random(1)
    x, y = rng.sample(range(100), 30), rng.sample(range(100), 30)  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    rank = lambda values: {v: i + 1 for i, v in enumerate(sorted(values))}  # noqa: E731
    rx, ry = rank(x), rank(y)
    reference = 1 - 6 * sum((rx[a] - ry[b]) ** 2 for a, b in zip(x, y)) / (30 * (30**2 - 1))
    assert spearman_correlation(torch.tensor(x, dtype=torch.float), y) == pytest.approx(reference)


def test_glue_metric_ranges():
    assert glue_metric(glue_spec("sst2")) == Metric("accuracy", True, 0.0, 1.0)
    assert glue_metric(glue_spec("mrpc")) == Metric("f1", True, 0.0, 1.0)
    assert glue_metric(glue_spec("cola")) == Metric("matthews", True, -1.0, 1.0)
    assert glue_metric(glue_spec("stsb")) == Metric("pearson", True, -1.0, 1.0)


def test_meter_takes_argmax_over_batches():
    meter = GlueMeter(glue_spec("mrpc"))
    meter.update(torch.tensor([[0.1, 0.9], [2.0, -1.0]]), torch.tensor([1, 1]))  # predicts 1, 0
    meter.update(torch.tensor([[0.0, 3.0], [1.0, 0.0], [-1.0, 1.0]]), torch.tensor([0, 0, 1]))  # predicts 1, 0, 1
    predictions, labels = [1, 0, 1, 0, 1], [1, 1, 0, 0, 1]
    values = meter.values()
    assert list(values) == ["f1", "accuracy"]
    assert values == {"f1": pytest.approx(binary_f1(predictions, labels)), "accuracy": pytest.approx(0.6)}
    assert meter.value() == values["f1"]
    cola = GlueMeter(glue_spec("cola"))
    cola.update(torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]]), torch.tensor([1, 0, 0]))
    assert set(cola.values()) == {"matthews", "accuracy"} and cola.value() == pytest.approx(0.5)


def test_meter_squeezes_regression_scores():
    meter = GlueMeter(glue_spec("stsb"))
    meter.update(torch.tensor([[1.0], [2.0]]), torch.tensor([2.0, 4.0]))
    meter.update(torch.tensor([3.0, 4.0], dtype=torch.bfloat16), torch.tensor([5.0, 9.0]))
    assert meter.values() == {"pearson": pytest.approx(11 / math.sqrt(130)), "spearman": pytest.approx(1.0)}
    assert GlueMeter(glue_spec("sst2")).value() == 0.0  # nothing measured yet


@pytest.mark.skipif(not (SHARED_SST2 / "validation.tsv").is_file(), reason="no shared SST-2 copy")
def test_the_real_sst2_validation_file():
    spec = glue_spec("sst2")
    examples = read_split(split_file(SHARED_SST2, spec, "val"), spec)
    assert len(examples) == 872 and sum(examples.labels) == 444 and examples.text_b is None
    assert examples.text_a[0] == "it 's a charming and often affecting journey ."
    assert all(text == text.strip() and text for text in examples.text_a)
