"""Config keys and output fields renamed since earlier versions, in one place.

On the command line an old key is one line naming its new name (`cli.main`); what earlier runs
saved is read with the new names: the config a checkpoint or a run directory keeps
(`upgrade_config`), and summary.json and grid.json (`upgrade_record`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

# old key -> new key (dotted config paths)
RENAMED_KEYS = {
    "trainer.update": "trainer.objective",  # `update` shadowed DictConfig.update
    "eval.calib_images": "eval.calib_examples",  # every task's examples, not only images
    "bench.eval_images": "bench.eval_examples",
    "bench.calib_images": "bench.calib_examples",
    "select.min_accuracy": "select.metric_bar",  # in the metric's units: a ceiling for a loss
    "trainer.channels_last": "data.channels_last",  # the memory format is the (image) task's
    "trainer.amp": "trainer.precision",  # fp32, bf16 or fp16, on every device and strategy
}
# new key -> {old value: new value}
RENAMED_VALUES = {
    "trainer.objective": {"draws": "sampled"},
    "trainer.precision": {True: "auto", False: "fp32"},  # amp=true was bf16 autocast on CUDA only: precision=auto
}
# summary.json and grid.json fields: old -> new
RENAMED_FIELDS = {
    "images_per_second": "examples_per_second",
    "eval_images": "eval_examples",
    "calib_images": "calib_examples",
}


def renamed_override(args: Iterable[str]) -> Optional[str]:
    """The one-line message for the first command-line override that sets a renamed key."""
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in RENAMED_KEYS:
            return f"{key} was renamed to {RENAMED_KEYS[key]}"
    return None


def upgrade_config(config: dict, has_key: Optional[Callable[[str, str], bool]] = None) -> dict:
    """A saved config (a plain dict) with renamed keys and values under their new names; a new
    key already set wins over its old one. `has_key(section, key)`: whether that section's schema
    takes the key; one moved into a section that does not is dropped (trainer.channels_last of a
    text run: its data has no memory format)."""
    for old, new in RENAMED_KEYS.items():
        old_section, old_name = old.split(".")
        new_section, new_name = new.split(".")
        section = config.get(old_section)
        if not isinstance(section, dict) or old_name not in section:
            continue
        value = section.pop(old_name)
        if has_key is not None and not has_key(new_section, new_name):
            continue
        target = config.setdefault(new_section, {})
        if isinstance(target, dict):
            target.setdefault(new_name, RENAMED_VALUES.get(new, {}).get(value, value))
    return config


def upgrade_record(record: Optional[dict]) -> Optional[dict]:
    """summary.json or grid.json of an earlier run with its fields under their new names."""
    if not isinstance(record, dict):
        return record
    return {RENAMED_FIELDS.get(key, key) if RENAMED_FIELDS.get(key) not in record else key: value for key, value in record.items()}
