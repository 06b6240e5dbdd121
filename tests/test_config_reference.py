"""The README's config reference against the schemas: the dataclasses hold the defaults (conf/
sets only what differs), and the README shows them. Every default in bold (**value**) in the
"Groups (group=option) and their keys" table and in the commands' key paragraphs after it must
be what the composed config holds, every key a schema has must be named there, and the options
listed must be the option files in conf/."""

from __future__ import annotations

import functools
import re

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sortednet_cli import cli
from sortednet_cli.plugins import register_configs

from conftest import REPO

README = (REPO / "README.md").read_text()

# Groups whose option files live in conf/<group>/ (hydra/launcher's also include Hydra's own basic).
GROUP_DIRS = {"model": "model", "pool": "pool", "sampler": "sampler", "data": "data", "optim": "optim", "sched": "sched",
              "trainer": "trainer", "logger": "logger", "experiment": "experiment", "+sweep": "sweep", "hydra/launcher": "hydra/launcher"}
# Keys of the schemas the README does not name, each with the reason.
UNNAMED = {
    # The option's own name: the option itself (`model=cpreresnet20`), in the options column.
    "name": "the option's name",
    # A sub-model's kind is the option of the sub group (sub=one | sub=selected).
    "sub.kind": "the option of the sub group",
    # bench composes the training groups only so that a model family may choose its own; unused.
    "bench:optim": "unused by bench", "bench:sched": "unused by bench", "bench:trainer": "unused by bench",
    # describe composes them so that a model family or an experiment may set them; its estimate reads the trainer only.
    "describe:optim": "unused by describe", "describe:sched": "unused by describe", "describe:eval": "unused by describe",
}
# A bold default that is not the group default option's value, but that of the options the key is for.
VALUE_OF = {
    # alpha is read by weighted and width_major only, whose files set 1.0; the schema's null
    # (uniform's, sandwich's, full's) means "not set".
    ("sampler", "alpha"): ("weighted", "width_major"),
}


def env_free(monkeypatch) -> None:
    """The data paths as their defaults, not this machine's environment."""
    for name in ("SORTEDNET_DATA", "SORTEDNET_GLUE", "SORTEDNET_TEXT", "SORTEDNET_IMAGES", "SORTEDNET_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)


@functools.lru_cache(maxsize=None)
def composed(config_name: str, overrides: tuple[str, ...] = ()):
    """The composed config with Hydra's own node (its choices and launcher), unresolved."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("sortednet_cli.conf", version_base="1.3"):
        return compose(config_name, overrides=cli.quote_numeric_options(list(overrides)), return_hydra_config=True)


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


# --- reading the README's key lists -----------------------------------------------------------


def no_intervals(text: str) -> str:
    """Intervals such as (0, 1] written [0, 1], so that parentheses balance."""
    return re.sub(r"\((\d[\d.]*, ?[\d.]+)\]", r"[\1]", text)


def split_top(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` outside parentheses and backticks."""
    parts, depth, tick, start, i = [], 0, False, 0, 0
    while i < len(text):
        c = text[i]
        if c == "`":
            tick = not tick
        elif not tick and c == "(":
            depth += 1
        elif not tick and c == ")":
            depth -= 1
        elif not tick and depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return parts + [text[start:]]


def top_bolds(text: str) -> list[str]:
    """The bold values of `text` outside its nested parentheses."""
    depth, flat = 0, []
    for c in text:
        depth += c == "("
        if depth == 0:
            flat.append(c)
        depth -= c == ")" and depth > 0
    return [b.strip("`") for b in re.findall(r"\*\*(.+?)\*\*", "".join(flat))]


def key_items(text: str) -> list[tuple[list[str], str]]:
    """`a` (...), `b` / `c` (...), `d`: each group of keys joined by " / " with the text of the
    parenthesis after it ("" when none); keys named inside a parenthesis count too."""
    items, keys, i, between = [], [], 0, ""
    while i < len(text):
        c = text[i]
        if c == "`":
            end = text.index("`", i + 1)
            name = text[i + 1:end]
            if keys and between.strip() == "/":
                keys.append(name)
            else:
                if keys:
                    items.append((keys, ""))
                keys = [name]
            between, i = "", end + 1
        elif c == "(":
            depth, j = 0, i
            while True:
                depth += text[j] == "("
                depth -= text[j] == ")"
                if depth == 0:
                    break
                j += 1
            inner = text[i + 1:j]
            if keys:
                items.append((keys, inner))
                keys = []
            items.extend(key_items(inner))
            between, i = "", j + 1
        else:
            between += c
            i += 1
    if keys:
        items.append((keys, ""))
    return items


def segments(cell: str) -> list[tuple[list[str], str]]:
    """A keys cell cut into its "option / option: keys" segments (options [] when it has no header)."""
    out = []
    for part in split_top(cell, "; "):
        head, sep, rest = part.partition(":")
        if sep and re.fullmatch(r"\s*`?[\w-]+`?(\s*/\s*`?[\w-]+`?)*\s*", head):
            out.append(([o.strip(" `") for o in head.split("/")], rest))
        else:
            out.append(([], part))
    return out


def value(text: str):
    """A README value as the config holds it: null, true, 5e-4, [0.9, 0.999], auto, ROMEO:."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return text if isinstance(parsed, dict) else parsed


def table_rows() -> dict[str, tuple[str, str]]:
    """group -> (options cell, keys cell) of the Config reference table."""
    section = README.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        # Cells split at unescaped pipes (a pipe inside a cell is written \\|, as GitHub needs).
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] if line.startswith("| ") else []
        if len(cells) == 3 and cells[0] not in ("group", "---"):
            name = cells[0].strip("()") if cells[0].startswith("(") else re.sub(r"\s*\(.*\)$", "", cells[0]).strip("`")
            rows[name] = (no_intervals(cells[1]), no_intervals(cells[2]))
    return rows


def paragraph(start: str) -> str:
    """The README paragraph that begins with `start`, without it."""
    section = README.split("## Config reference", 1)[1]
    text = next(p for p in section.split("\n\n") if p.startswith(start))
    return no_intervals(" ".join(text[len(start):].split()))


def options_in_conf(group: str) -> set[str]:
    found = {p.stem for p in (REPO / "conf" / GROUP_DIRS[group]).glob("*.yaml")}
    return found | {"basic"} if group == "hydra/launcher" else found


# --- the groups' table --------------------------------------------------------------------------


ROWS = table_rows()
GROUPS = ("model", "pool", "sampler", "data", "optim", "sched", "trainer", "logger")


def test_the_table_has_a_row_per_group_and_every_train_key():
    assert set(GROUP_DIRS) | {"top level", "eval", "select"} <= set(ROWS)
    named = {k for keys, _ in key_items(ROWS["top level"][1]) for k in keys}
    assert set(composed("train")) - {"hydra"} <= set(ROWS) | named


@pytest.mark.parametrize("group", GROUP_DIRS)
def test_the_options_listed_are_the_option_files(group):
    listed = {k for part in split_top(ROWS[group][0], ", ") for k in re.findall(r"^\**`([^`]+)`", part.strip())}
    assert listed == options_in_conf(group), f"README's {group} options"


@pytest.mark.parametrize("group", [g for g in GROUP_DIRS if g not in ("experiment", "+sweep")])
def test_the_bold_option_is_the_default(group):
    bold = top_bolds(ROWS[group][0])[0]
    assert composed("train").hydra.runtime.choices[group.lstrip("+")] == bold


def group_config(group: str, option: str) -> dict:
    if group == "hydra/launcher":  # unresolved: its paths interpolate the run's
        return OmegaConf.to_container(composed("train", (f"hydra/launcher={option}",)).hydra.launcher)
    return plain(composed("train", (f"{group}={option}",))[group])


@pytest.mark.parametrize("group", [*GROUPS, "hydra/launcher"])
def test_every_bold_default_is_the_composed_value(group, monkeypatch):
    env_free(monkeypatch)
    default = composed("train").hydra.runtime.choices[group]
    checked = 0
    for options, text in segments(ROWS[group][1]):
        for keys, inner in key_items(text):
            bolds = top_bolds(inner)
            if not bolds:
                continue
            values = bolds if len(bolds) == len(keys) else [bolds[0]] * len(keys)
            for key, shown in zip(keys, values):
                key = key.removeprefix("hydra.launcher.")
                found = 0
                for option in options or VALUE_OF.get((group, key), (default,)):
                    cfg = group_config(group, option)
                    if key in cfg:  # the cifar10 / cifar100 / fake segment: fake_train_size is fake's
                        assert cfg[key] == value(shown), f"README: {group}={option} {key} (**{shown}**), composed {cfg[key]!r}"
                        found += 1
                assert found, f"README names {group}.{key} (**{shown}**), which {' / '.join(options or [default])} does not have"
                checked += found
    assert checked or group in ("pool", "logger")  # rows without defaults shown


@pytest.mark.parametrize("group", GROUPS)
def test_every_schema_key_is_named(group):
    named: dict[str, set[str]] = {}
    for options, text in segments(ROWS[group][1]):
        keys = {k for ks, _ in key_items(text) for k in ks}
        for option in options or options_in_conf(group):
            named.setdefault(option, set()).update(keys)
    for option in options_in_conf(group):
        missing = set(group_config(group, option)) - named.get(option, set()) - set(UNNAMED)
        assert not missing, f"README's {group} row does not name {sorted(missing)} of {group}={option}"


@pytest.mark.parametrize("group", ["eval", "select"])
def test_the_keys_only_rows(group, monkeypatch):
    env_free(monkeypatch)
    cfg = plain(composed("train")[group])
    items = key_items(ROWS[group][1])
    assert set(cfg) == {k for keys, _ in items for k in keys}
    for keys, inner in items:
        for key in keys:
            if top_bolds(inner):
                assert cfg[key] == value(top_bolds(inner)[0]), f"README: {group}.{key}"


# --- the commands' key paragraphs ----------------------------------------------------------------


MISSING = object()


def leaf(cfg: dict, path: str):
    for part in path.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return MISSING
        cfg = cfg[part]
    return cfg


COMMANDS = {
    "eval_grid": ("eval-grid's own keys: ", "select's: "),
    "select": ("select's: ", "export's: "),
    "export": ("export's: ", None),
    "bench": ("`sortednet bench` keys: ", None),
    "generate": ("`sortednet generate` keys: ", None),
    "bench_decode": ("`sortednet bench-decode` keys: ", None),
    "report": ("`sortednet report` keys: ", None),
    "describe": ("`sortednet describe` keys: ", None),
}
# Settings nodes whose every key the paragraph names one by one (others: `eval.*` or a group).
OWN_SETTINGS = {"bench": "bench", "generate": "generate", "bench_decode": "bench", "describe": "memory"}


def command_items(command: str) -> list[tuple[list[str], str]]:
    start, stop = COMMANDS[command]
    text = paragraph("eval-grid's own keys: ") if command in ("eval_grid", "select", "export") else paragraph(start)
    if command in ("eval_grid", "select", "export"):
        text = text.split(start, 1)[1] if command != "eval_grid" else text
        text = text.split(stop, 1)[0] if stop else text
    return key_items(text)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_key_is_named_with_its_default(command, monkeypatch):
    env_free(monkeypatch)
    node = composed(command)
    cfg = plain(OmegaConf.masked_copy(node, [k for k in node if k != "hydra"]))
    choices = composed(command).hydra.runtime.choices
    items = command_items(command)
    named = {k for keys, _ in items for k in keys}
    for keys, inner in items:
        bolds = top_bolds(inner)
        for key in keys:
            if not bolds or key.endswith(".*"):
                continue
            if key in choices and isinstance(cfg.get(key), dict):  # a group: its default option
                assert str(choices[key]) == bolds[0], f"README: {command} {key}=**{bolds[0]}**"
            else:
                assert leaf(cfg, key) is not MISSING, f"README names {command}'s {key}, which its config does not have"
                assert leaf(cfg, key) == value(bolds[0]), f"README: {command} {key} (**{bolds[0]}**), composed {leaf(cfg, key)!r}"
    for key, node in cfg.items():
        if f"{command}:{key}" in UNNAMED:
            continue
        if OWN_SETTINGS.get(command) == key:
            missing = {f"{key}.{k}" for k in node} - named
        else:
            mentioned = key in named or any(n.startswith(f"{key}.") for n in named)
            missing = set() if mentioned else {key}
        missing -= set(UNNAMED)
        assert not missing, f"README's {command} keys do not name {sorted(missing)}"
