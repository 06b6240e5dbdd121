"""Every registered model family keeps the model protocol, and every task the task protocol:
not only the method names, but the equivalences the engine relies on."""

import json

import pytest
import torch

from sortednet_cli.models import FAMILIES, SortedModel, build_model
from sortednet_cli.sorted.pool import pool_from_config
from sortednet_cli.sorted.submodel import SubModel, full_submodel
from sortednet_cli.tasks import TASKS, Task, build_task

from conftest import compose_config, tiny_text_overrides
from test_data import write_tiny_cifar100
from test_image_folder import write_tree

FAMILY_NAMES = FAMILIES.names()


TEXT_FAMILIES = ("bert", "roberta", "llama", "encoder", "decoder")


def family(name, request):
    overrides = tiny_text_overrides(name, request.getfixturevalue("glue_root"), request.getfixturevalue("text_path")) if name in TEXT_FAMILIES else [f"model={name}"]
    cfg = compose_config("train", [*overrides, *(["data.channels_last=false"] if name not in TEXT_FAMILIES else [])])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, task.model_fields()).eval()
    with torch.no_grad():  # norm statistics away from their defaults, so slicing errors show
        for buffer_name, buf in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif buffer_name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return cfg, model, task


def walk(model, x, sub):
    """The prefix protocol's pieces, in order: what shared evaluation composes."""
    h = model.run_stem(x, sub.width)
    for stage, blocks in enumerate(sub.depth):
        for index in range(blocks):
            h = model.run_block(stage, index, h, sub.width)
    return model.run_head(h, sub.width)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_model_family_keeps_the_protocol(name, request):
    cfg, model, task = family(name, request)
    assert isinstance(model, SortedModel)
    x = task.example_input(3)
    full = full_submodel(model.depth_limits)
    narrowest = SubModel(0.05, (1,) * len(model.depth_limits))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, full))
        for sub in (full, narrowest, SubModel(0.5, model.depth_limits)):
            out = model(x, sub)
            torch.testing.assert_close(walk(model, x, sub), out)
            torch.testing.assert_close(model.extract(sub).eval()(x), out, rtol=1e-5, atol=1e-5)
    for sub in (narrowest, full):
        assert all(isinstance(model.block_module(s, i), torch.nn.Module) for s, n in enumerate(sub.depth) for i in range(n))
    assert isinstance(model.head_module(), torch.nn.Module)
    assert model.unit_summary(0.05) != model.unit_summary(1.0)
    pool = pool_from_config(cfg.pool, model.depth_limits)  # the family's default pool fits it
    assert len(pool) > 1


@pytest.mark.parametrize("data_name", TASKS.names())
def test_every_task_keeps_the_protocol(data_name, request):
    overrides = [f"data={data_name}"]
    if data_name == "cifar10":  # the protocol's attributes read the data
        overrides += [f"data.root={request.getfixturevalue('cifar10_root')}", "data.verify=false"]
    if data_name == "cifar100":
        overrides += [f"data.root={write_tiny_cifar100(request.getfixturevalue('tmp_path'))}", "data.verify=false"]
    if data_name == "image_folder":
        overrides += [f"data.root={write_tree(request.getfixturevalue('tmp_path') / 'images')}", "data.workers=0"]
    if data_name in ("glue", "text", "instructions"):  # text tasks need a model of their kind
        family = "bert" if data_name == "glue" else "llama"
        overrides = tiny_text_overrides(family, request.getfixturevalue("glue_root"), request.getfixturevalue("text_path")) + overrides
    if data_name == "instructions":
        path = request.getfixturevalue("tmp_path") / "train.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"say {word}", "response": word}) + "\n" for word in ("yes", "no") * 20))
        overrides = [o for o in overrides if not o.startswith("data.block_size")] + [f"data.path={path}", "data.max_length=32", "data.vocab_size=300"]
    cfg = compose_config("train", overrides)
    assert isinstance(build_task(cfg.data, cfg.model, torch.device("cpu")), Task)
