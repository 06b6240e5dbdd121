"""Code outside a model family or a task never names them: it asks the family's or the task's
protocol. A string equal to a family, layout or task name may appear only in the modules that
define them (models/ for families and layouts, tasks/ for tasks) and in conf/."""

import ast
from pathlib import Path

import sortednet_cli
from sortednet_cli.models import FAMILIES
from sortednet_cli.models.hf_layouts import LAYOUTS
from sortednet_cli.tasks import TASKS

PACKAGE = Path(sortednet_cli.__file__).parent
# Keys of JSON files and words of the CLI that happen to equal a task name.
NOT_A_NAME = {("commands/generate.py", "text")}


def named_strings(owner: str, names: set[str]) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(owner):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names and (relative, node.value) not in NOT_A_NAME:
                found.append(f"{relative}:{node.lineno} {node.value!r}")
    return found


def test_family_and_layout_names_stay_in_models():
    assert named_strings("models/", set(FAMILIES.names()) | set(LAYOUTS)) == []


def test_task_names_stay_in_tasks():
    assert named_strings("tasks/", set(TASKS.names())) == []
