"""Categorical and task conditions of generators (wsl.generators.conditions), class-pair tasks
(dataset.task), and the fine-tuning comparison of wsl-evaluate (finetune_steps).

- a category column (text, or a number column listed in condition.categorical) is stored with its
  vocabulary and reaches the denoiser one-hot, exactly; the run reloads to the same samples;
- bad input names its key: an unknown category, a word for a numeric condition, a column mixing numbers
  and text, a missing column, an invalid task;
- dataset.task=<a>v<b> is the dataset restricted to two classes (checked against the full data);
- the set encoder is a function of the set (order does not matter), and a task never seen is encoded
  from its own train examples;
- fine-tuning takes real optimizer steps: the result equals a hand-written Adam loop on the same batches;
- (slow) the whole path on a two-task zoo: train conditioned on the task with one held out, sample the held-out
  task, wsl-evaluate finetune_steps.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, make_zoo, typed_gen, typed_zoo
from wsl.errors import ConfigError
from wsl.generators.conditions import (CATEGORICAL, NUMERIC, TASK, ConditionEncoder, ConditionSpec, SetEncoder,
                                       read_conditions, task_examples)

QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
DIGITS = {"_target_": "wsl.data.load_dataset", "name": "digits", "root": None, "split_seed": 0, "subset_seed": 0,
          "task": None, "test_fraction": 0.2, "train_fraction": 1.0, "val_fraction": 0.2}


@pytest.fixture(scope="module")
def cat_run(tiny_zoo, tmp_path_factory):
    from wsl.generators.train import train_generator

    run_dir = tmp_path_factory.mktemp("catgen") / "run"
    job = typed_gen("train_generator", [f"zoo.path={tiny_zoo}", "condition.columns=[replica,optimizer,val_acc]",
                                        "condition.categorical=[replica]", "trainer.max_steps=10",
                                        "generator.denoiser.hidden=32", "spread.n=16", *QUIET])
    train_generator(job, run_dir=run_dir)
    return run_dir


def test_categorical_conditions_are_one_hot_stored_and_reloaded(cat_run, tiny_zoo):
    from wsl.generators.generator_run import load_run
    from wsl.generators.sample import condition_tensor, sample_weights
    from wsl.zoo import Zoo

    run = load_run(cat_run)
    spec = run.conditions.spec
    assert spec.kinds == [CATEGORICAL, CATEGORICAL, NUMERIC]  # optimizer: a text column, a category anyway
    assert spec.vocab == {"replica": [0, 1, 2, 3], "optimizer": ["sgd"]}
    assert run.denoiser.kwargs["cond_dim"] == 4 + 1 + 1
    va = Zoo(tiny_zoo).table()["val_acc"]
    mean, std = va.mean(), va.std(ddof=0)
    got = condition_tensor(run, {"replica": 2, "optimizer": "sgd", "val_acc": 0.5}, 3)
    want = torch.tensor([0, 0, 1, 0, 1, (0.5 - mean) / std], dtype=torch.float32).expand(3, -1)
    assert torch.allclose(got, want, atol=1e-6)
    a = sample_weights(run, 4, seed=1, condition={"replica": 2, "optimizer": "sgd", "val_acc": 0.5}, guidance=2.0)
    b = sample_weights(load_run(cat_run), 4, seed=1, condition={"replica": 2, "optimizer": "sgd", "val_acc": 0.5},
                       guidance=2.0)
    assert torch.equal(a, b)  # the stored vocabulary and encoder give the same draw after a reload
    assert not torch.allclose(a, sample_weights(run, 4, seed=1, condition={"replica": 0, "optimizer": "sgd",
                                                                           "val_acc": 0.5}, guidance=2.0))
    with pytest.raises(ConfigError, match=r"condition.replica=7 is not a category .* known: \[0, 1, 2, 3\]"):
        condition_tensor(run, {"replica": 7, "optimizer": "sgd", "val_acc": 0.5}, 1)
    with pytest.raises(ConfigError, match="condition.optimizer='rmsprop' is not a category"):
        condition_tensor(run, {"replica": 1, "optimizer": "rmsprop", "val_acc": 0.5}, 1)
    with pytest.raises(ConfigError, match="condition.val_acc='high': val_acc is a numeric condition"):
        condition_tensor(run, {"replica": 1, "optimizer": "sgd", "val_acc": "high"}, 1)
    # wsl-sample's schema takes category names
    job = typed_gen("sample", [f"run={cat_run}", "zoo.path=x", "condition={optimizer:sgd,replica:1,val_acc:0.5}"])
    assert job.condition == {"optimizer": "sgd", "replica": 1, "val_acc": 0.5}


def test_condition_columns_bad_input_names_the_key():
    table = pd.DataFrame({"acc": [0.5, "n/a", 0.7], "opt": ["adam", "sgd", "adam"], "lr": [0.1, 0.01, 0.1]},
                         index=["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"column 'acc' of z is numeric but model b has 'n/a'.*categorical=\[acc\]"):
        read_conditions(table, ["a", "b", "c"], ["acc"], where="z")
    with pytest.raises(ConfigError, match=r"condition.columns: \['width2'\] are not columns of z"):
        read_conditions(table, ["a", "b"], ["width2"], where="z")
    spec, raw = read_conditions(table, ["a", "b", "c"], ["opt", "lr"], categorical=["lr"], where="z")
    assert spec.vocab == {"opt": ["adam", "sgd"], "lr": [0.01, 0.1]}
    assert raw.tolist() == [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ConfigError, match=r"condition.categorical: \['lr'\] are not in condition.columns"):
        typed_gen("train_generator", ["zoo.path=x", "condition.columns=[val_acc]", "condition.categorical=[lr]",
                                      *QUIET])
    with pytest.raises(ConfigError, match="dataset.task='3v3': a task pairs two different classes"):
        task_examples(DIGITS, "3v3", "dataset.task")
    from wsl.apps.evaluate import typed_config as eval_config

    with pytest.raises(ConfigError, match=r"finetune_steps must be a non-empty list of step counts"):
        eval_config(compose_cfg("evaluate", ["zoo.path=x", "reference=y", "finetune_steps=[0,-1]"]))
    with pytest.raises(ConfigError, match=r"finetune.optimizer"):
        eval_config(compose_cfg("evaluate", ["zoo.path=x", "reference=y", "finetune_steps=[0]",
                                             "finetune.optimizer=lbfgs"]))
    with pytest.raises(ConfigError, match=r"dataset.task='2v2'"):
        typed_zoo(["zoo.path=x", "dataset.task=2v2"])


def test_class_pair_task_is_the_two_classes_of_the_full_data():
    from wsl.data import load_dataset
    from wsl.data.schema import ClassificationDatasetConfig

    full, pair = load_dataset("digits"), load_dataset("digits", task="8v3")
    for s in ("train", "val", "test"):
        x, y = full.split(s)
        px, py = pair.split(s)
        keep = (y == 8) | (y == 3)
        assert torch.equal(px, x[keep]) and torch.equal(py, (y[keep] == 3).long())  # label 0 = 8, label 1 = 3
    assert pair.num_classes == 2 and pair.info["task"] == "8v3"
    cfg = ClassificationDatasetConfig(task="8v3")
    assert cfg.shape() == ((1, 8, 8), 2) and cfg.hparams()["task"] == "8v3"
    with pytest.raises(ConfigError, match="task='10v3'"):
        load_dataset("digits", task="10v3")


def test_set_encoder_is_a_set_function_and_encodes_unseen_tasks():
    torch.manual_seed(0)
    enc = SetEncoder(64, 2, hidden=16, dim=8)
    x, y = task_examples(DIGITS, "1v7")
    perm = torch.randperm(len(y))
    assert torch.allclose(enc(x, y), enc(x[perm], y[perm]), atol=1e-5)
    assert not torch.allclose(enc(x, y), enc(x, 1 - y))  # the labels matter
    se = {"in_features": 64, "num_classes": 2, "hidden": 16, "dim": 8}
    spec = ConditionSpec(["task", "val_acc"], [TASK, NUMERIC], {"task": ["0v1", "2v3"]}, se)
    ce = ConditionEncoder(spec, set_size=16)
    ce.set_encoder.load_state_dict(enc.state_dict())
    mean, std = torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.25], dtype=torch.float64)
    v = ce.encode_values({"task": "1v7", "val_acc": 0.75}, mean, std, DIGITS)  # a task the spec never saw
    assert torch.allclose(v, torch.cat([enc(x, y), torch.tensor([1.0])]), atol=1e-6)
    ce.attach_tasks(DIGITS)  # training rows: task index -> the embedding of that task's examples
    ce.eval()
    rows = ce(torch.tensor([[1.0, 0.3], [0.0, -1.0]]))
    assert torch.allclose(rows[0, :8], enc(*task_examples(DIGITS, "2v3")), atol=1e-6) and rows[1, 8] == -1.0
    with pytest.raises(ConfigError, match="condition.task='bogus' is not a task name"):
        ce.encode_values({"task": "bogus", "val_acc": 0.5}, mean, std, DIGITS)


def test_finetuning_takes_real_optimizer_steps():
    from wsl.data import load_dataset
    from wsl.evaluate.finetune import finetune_steps_run
    from wsl.nets import MLP

    data = load_dataset("digits", task="4v9")
    torch.manual_seed(0)
    net = MLP((1, 8, 8), 2, width=8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randint(0, len(data.y_train), (16,), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    got = finetune_steps_run(net, state, data, [0, 2, 5], batches, "adam", 0.01, "val")
    ref = MLP((1, 8, 8), 2, width=8)
    ref.load_state_dict(state)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    xv, yv = data.split("val")
    want = [(0, float((ref(xv).argmax(-1) == yv).float().mean()))]
    for k, idx in enumerate(batches, 1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
        if k in (2, 5):
            with torch.no_grad():
                want.append((k, float((ref(xv).argmax(-1) == yv).float().mean())))
    assert [(k, a) for k, a, _ in got] == want
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))


@pytest.mark.slow
def test_task_conditioned_generation_end_to_end(tmp_path):
    """Two tasks in one zoo; the generator learns 0v1 (2v3 held out), samples 2v3 from its examples, and
    wsl-evaluate fine-tunes the samples against random inits and the nearest zoo nets."""
    from wsl.apps.evaluate import typed_config as eval_config
    from wsl.evaluate.finetune import finetune_zoo
    from wsl.generators.generator_run import load_run
    from wsl.generators.sample import sample_zoo
    from wsl.generators.train import train_generator
    from wsl.zoo import Zoo

    zoo = tmp_path / "tasks"
    for t in ("0v1", "2v3", "4v5"):
        make_zoo(zoo, ["experiment=tasks_digits", f"dataset.task={t}", "population.size=3", "train.epochs=3"])
    assert sorted(set(Zoo(zoo).table()["task"])) == ["0v1", "2v3", "4v5"]
    with pytest.raises(ConfigError, match="trained on different data"):  # unconditional: one dataset only
        train_generator(typed_gen("train_generator", [f"zoo.path={zoo}", "trainer.max_steps=2", *QUIET]),
                        run_dir=tmp_path / "r0")
    job = typed_gen("train_generator", [f"zoo.path={zoo}", "condition.columns=[task]", "zoo.exclude={task:[2v3]}",
                                        "trainer.max_steps=20", "generator.denoiser.hidden=32", "spread.n=16",
                                        "condition.set_encoder.set_size=8", *QUIET])
    train_generator(job, run_dir=tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.conditions.spec.vocab == {"task": ["0v1", "4v5"]} and run.zoo["exclude"] == {"task": ["2v3"]}
    gen = tmp_path / "gen"
    sample_zoo(typed_gen("sample", [f"run={tmp_path / 'run'}", "n=4", f"zoo.path={gen}", "condition={task:2v3}",
                                    "guidance=2", *QUIET[:1]]))
    g = Zoo(gen)
    assert g.job_config(g.ids[0])["dataset"]["task"] == "2v3" and g.training_data().num_classes == 2
    with pytest.raises(ConfigError, match=r"conditioned on task; a sampled zoo holds the nets of one task"):
        sample_zoo(typed_gen("sample", [f"run={tmp_path / 'run'}", "n=2", f"zoo.path={tmp_path / 'g2'}", *QUIET[:1]]))
    assert not (tmp_path / "g2").exists()
    with pytest.raises(ConfigError, match="condition.task='7v7'"):
        sample_zoo(typed_gen("sample", [f"run={tmp_path / 'run'}", "n=2", f"zoo.path={tmp_path / 'g2'}",
                                        "condition={task:7v7}", *QUIET[:1]]))
    ev = eval_config(compose_cfg("evaluate", [
        f"zoo.path={gen}", f"reference={zoo}", "finetune_steps=[0,3]", "logger=none", "novelty.top_k=1"]))
    result, report = finetune_zoo(ev)
    sets = {(s["set"], s["steps"]): s for s in result["summary"]}
    assert {k for k in sets} == {(n, k) for n in ("generated", "random init", "nearest zoo net",
                                                  "best zoo nets", "zoo nets of this task") for k in (0, 3)}
    assert sets[("zoo nets of this task", 0)]["n"] == 3 and sets[("generated", 3)]["n"] == 4
    assert (report.parent / "finetune.png").stat().st_size > 1000 and "2v3" in report.read_text()


def test_condition_list_is_shorthand_for_its_columns():
    from wsl.apps.train_generator import alias_condition_list

    assert alias_condition_list(["zoo.path=z", "condition=[val_acc,optimizer]", "condition.dropout=0.2"]) == [
        "zoo.path=z", "condition.columns=[val_acc,optimizer]", "condition.dropout=0.2"]
