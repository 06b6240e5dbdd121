"""SST-2 as instruction pairs (SoFT's setting): `Review: <sentence>` / `Sentiment:` -> positive or
negative, one JSON object per line. Usage: python sweeps/sst2_instructions.py <sst2 folder> <out>
[max characters] (reads train.tsv and validation.tsv or dev.tsv, writes train.jsonl and val.jsonl;
with a maximum, longer sentences are left out, for a model whose context they would not fit)."""

import csv
import json
import sys
from pathlib import Path

LABELS = {"0": "negative", "1": "positive"}


def convert(tsv: Path, out: Path, max_chars: int) -> int:
    with open(tsv, newline="", encoding="utf-8") as f, open(out, "w", encoding="utf-8") as w:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        count = 0
        for row in rows:
            if max_chars and len(row["sentence"].strip()) > max_chars:
                continue
            w.write(json.dumps({"prompt": f"Review: {row['sentence'].strip()}\nSentiment:", "response": LABELS[row["label"]]}) + "\n")
            count += 1
    return count


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    max_chars = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    out.mkdir(parents=True, exist_ok=True)
    validation = source / "validation.tsv" if (source / "validation.tsv").is_file() else source / "dev.tsv"
    print(f"{convert(source / 'train.tsv', out / 'train.jsonl', max_chars)} training and {convert(validation, out / 'val.jsonl', max_chars)} validation pairs in {out}")


if __name__ == "__main__":
    main()
