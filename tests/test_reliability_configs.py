"""Bad configs everywhere: every app (wsl/apps/*.py with a main) stops on an unknown key, a wrong type
and an impossible value with exit status 2 and one line on stderr, before writing anything.

The apps run in this process (their heavy imports are shared, so ~0.5 s per case instead of a
fresh interpreter each) exactly as their console scripts do: `main()` with sys.argv set. Each
test's working directory is an empty temp dir, and the zoo they are pointed at is a private
copy: both must be untouched afterwards. test_reliability.py and test_zoo.py run real console
scripts end to end.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT

APPS_DIR = ROOT / "wsl" / "apps"

# per app: the required arguments ({zoo} = a copy of a trained zoo, {tmp} = the working dir),
# an impossible value and a wrong type, with a pattern the one-line error must match
CASES = {
    "zoo": (["zoo.path={tmp}/new"], "net.width=0", r"net\.width", "train.epochs=many", r"train\.epochs"),
    "verify": (["zoo.path={zoo}"], "zoo.path=' '", r"zoo\.path", "checksums=maybe", r"checksums"),
    "landscape": (["zoo.path={zoo}"], "landscape.num_samples=0", r"num_samples", "landscape.epoch=last",
                  r"epoch"),
    "plot": (["zoo.path={zoo}"], "plot.format=gif", r"plot\.format", "plot.dpi=high", r"plot\.dpi"),
    "align": (["zoo.path={zoo}", "out={tmp}/aligned"], "matching.max_iter=0", r"max_iter", "epoch=last",
              r"epoch"),
    "train_encoder": (["zoo.path={zoo}"], "batch_size=0", r"batch_size", "seeds=three", r"seeds"),
    "train_generator": (["zoo.path={zoo}"], "batch_size=0", r"batch_size", "trainer.max_steps=lots",
                        r"max_steps"),
    "sample": (["run={tmp}/no-run", "zoo.path={tmp}/gen"], "n=0", r"\bn\b", "guidance=strong", r"guidance"),
    "evaluate": (["zoo.path={zoo}", "reference={zoo}"], "split=holdout", r"\bsplit\b", "max_nets=all", r"max_nets"),
    "embed": (["run={tmp}/no-run", "zoo.path={zoo}"], "batch_size=0", r"batch_size", "seed=first", r"\bseed\b"),
    "merge": (["zoo.path={zoo}", "method=uniform", "out={tmp}/new"], "merge.drop=1", r"merge\.drop",
              "merge.min_members=many", r"merge\.min_members"),
}


def app_modules() -> list[str]:
    """wsl/apps/<name>.py files that define main()."""
    out = []
    for p in sorted(APPS_DIR.glob("*.py")):
        tree = ast.parse(p.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(p.stem)
    return out


def test_every_app_is_covered():
    apps = app_modules()
    assert {"zoo", "verify"} <= set(apps)
    assert set(apps) <= set(CASES), f"add bad-config cases for {sorted(set(apps) - set(CASES))}"


def _snapshot(*dirs: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for d in dirs if d.exists() for p in d.rglob("*")}


@pytest.fixture(autouse=True)
def _isolate_hydra(restore_hydra_and_logging):
    """Every case runs an app in this process."""


@pytest.fixture
def private_zoo(tmp_path_factory, tiny_zoo) -> Path:
    root = tmp_path_factory.mktemp("cfg") / "zoo"
    shutil.copytree(tiny_zoo, root)
    return root


@pytest.mark.parametrize("kind", ["unknown key", "wrong type", "impossible value"])
@pytest.mark.parametrize("app", sorted(CASES))
def test_bad_config_fails_fast_with_one_line_before_writing(app, kind, tmp_path, private_zoo, monkeypatch, capfd):
    assert app in app_modules(), f"wsl/apps/{app}.py has no main(): drop its case or restore the app"
    _, impossible, imp_pat, wrong, wrong_pat = CASES[app]
    bad, pattern = {"unknown key": ("no_such_key=1", r"no_such_key"), "wrong type": (wrong, wrong_pat),
                    "impossible value": (impossible, imp_pat)}[kind]
    _fails_fast(app, bad, pattern, tmp_path, private_zoo, monkeypatch, capfd)


# more impossible values, where one of each kind above is not enough: non-finite numbers, seeds the
# zoo cannot store, trainer options that would change what wsl-zoo trains, devices that do not exist
MORE = [("zoo", "train.lr=nan", r"train\.lr"), ("zoo", "train.lr=[0.1,inf]", r"train\.lr"),
        ("zoo", "train.weight_decay=-inf", r"train\.weight_decay"), ("zoo", "train.momentum=nan", r"momentum"),
        ("zoo", "train.betas=[0.9,1.0]", r"train\.betas"), ("zoo", "population.seed=1e30", r"population\.seed"),
        ("zoo", "population.seed=100000000000000000000", r"population\.seed"),
        ("zoo", "dataset.split_seed=-1", r"dataset\.split_seed"),
        ("zoo", "+trainer.max_steps=3", r"trainer\.max_steps"),
        ("zoo", "+trainer.overfit_batches=2", r"trainer\.overfit_batches"), ("zoo", "trainer.devices=0", r"devices"),
        ("zoo", "net.width=1000000000", r"net\.width"), ("zoo", "trainer.accelerator=tpu", r"accelerator"),
        ("train_encoder", "trainer.devices=0", r"trainer\.devices"),
        ("train_generator", "trainer.accelerator=quantum", r"trainer\.accelerator"),
        ("sample", "device=cuda:99", r"\bdevice\b"), ("sample", "condition={val_acc:nan}", r"condition\.val_acc"),
        ("train_encoder", "split.by=seed", r"split\.by"), ("embed", "device=tpu", r"\bdevice\b"),
        ("evaluate", "device=cuda", r"\bdevice=cuda\b.*no CUDA GPU")]


@pytest.mark.parametrize("app, bad, pattern", MORE)
def test_more_impossible_values_fail_fast(app, bad, pattern, tmp_path, private_zoo, monkeypatch, capfd):
    _fails_fast(app, bad, pattern, tmp_path, private_zoo, monkeypatch, capfd)


def _fails_fast(app, bad, pattern, tmp_path, private_zoo, monkeypatch, capfd):
    args = [a.format(zoo=private_zoo, tmp=tmp_path) for a in CASES[app][0]]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", [f"wsl-{app.replace('_', '-')}", *args, bad])
    before = _snapshot(private_zoo)
    module = importlib.import_module(f"wsl.apps.{app}")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    err = capfd.readouterr().err.strip()
    assert exit_info.value.code == 2, f"{app} {bad}: exit status {exit_info.value.code}, stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{app} {bad}: not one line:\n{err}"
    import re

    assert re.search(pattern, lines[0]), f"{app} {bad}: the error does not name the key: {lines[0]}"
    assert not list(work.iterdir()), f"{app} {bad} wrote {sorted(p.name for p in work.iterdir())}"
    assert _snapshot(private_zoo) == before, f"{app} {bad} changed the zoo it was given"
    assert not any(p.name in ("new", "gen", "aligned") for p in tmp_path.iterdir()), f"{app} {bad} created output"


# the options every config group offers, composed into each app that pulls the group in; a -m sweep is
# checked job by job (each value once), as preflight checks a real sweep
LOGGERS = "logger=none,csv,tensorboard,wandb"
VALID = {
    "zoo": [["-m", "landscape=none,basic,full", LOGGERS], ["net=cnn", "dataset=mnist1d"]],
    "verify": [["-m", LOGGERS]],
    "landscape": [["-m", "landscape=basic,full,none", LOGGERS], ["model_ids=[a,b]"]],
    "plot": [["-m", LOGGERS], ["plot.x=width", "plot.y=lr", "plot.metrics=[train_loss]", "plot.format=svg"]],
    "align": [["-m", "reference=cell,global", "epochs=all,matched", "annotations=copy,drop"]],
    "evaluate": [["-m", LOGGERS, "split=train,val,test"], ["~baselines.gaussian", "failure.min_accuracy=0.5",
                                                            "reference_ids=[a]", "novelty.align=false", "device=cpu"],
                 ["encoder_run=runs/x", "encoder_seed=1"]],
    "embed": [["-m", LOGGERS, "score=true,false,null"], ["seed=0", "group=g", "zoo.epoch=3", "device=cuda"]],
    "sample": [["-m", LOGGERS], ["+condition.val_acc=0.9", "guidance=2", "steps=5", "threads=1", "device=cpu"],
               ["condition={val_acc:0.9}"]],
    "train_generator": [["-m", "generator=flow,diffusion", "generator/denoiser=mlp,transformer", LOGGERS],
                        ["representation.latent=true", "condition.columns=[val_acc]", "zoo.val_fraction=0.25",
                         "+zoo.filter.width=8", "generator.ema=null"], ["zoo.filter={width:8}"]],
    "merge": [["-m", "merge.by=cell,all", LOGGERS], ["method=stock", "merge.base=zoos/x:m@1", "threads=1"],
              ["method=dare", "merge.drop=0", "merge.scale=0.5"]],
    "train_encoder": [["-m", "encoder=deepsets,flat,graph,nfn,stats,transformer",
                       "task=gen_gap,hparams,inr_class,phase,test_acc"]],
}


@pytest.mark.parametrize("app", sorted(CASES))
def test_valid_configs_pass_the_checks(app, tmp_path, capfd):
    """The checks refuse only what is impossible: every app's defaults, each option of its config
    groups and each logger pass."""
    from wsl.apps.common import preflight

    required = [a.format(zoo=tmp_path / "zoo", tmp=tmp_path) for a in CASES[app][0]]
    module = importlib.import_module(f"wsl.apps.{app}")
    validate = module.typed_config
    for extra in [[], *VALID[app]]:
        try:
            preflight(app, validate, argv=[*required, *extra])
        except SystemExit:
            pytest.fail(f"wsl-{app} {' '.join(extra)}: {capfd.readouterr().err.strip()}")
    assert not list(tmp_path.iterdir()), "the checks wrote something"


def test_typing_a_config_leaves_nothing_behind_for_the_next():
    """wsl.apps.config builds each schema's OmegaConf template once: a typed mapping, a refused one and
    values merged into nested and list fields must not change what a later mapping that leaves those keys
    out types to (their defaults)."""
    from wsl.apps.config import typed
    from wsl.errors import ConfigError
    from wsl.landscape.schema import LandscapeConfig

    default = typed({}, LandscapeConfig, path="landscape")
    set_ = typed({"metrics": ["hessian_eig"], "epoch": [0, 2], "chunk_size": 8, "hessian_eig": {"max_iters": 3},
                  "phase": None}, LandscapeConfig, path="landscape")
    assert (set_.metrics, set_.epoch, set_.chunk_size) == (["hessian_eig"], [0, 2], 8)
    assert set_.hessian_eig.max_iters == 3 and set_.phase is None
    with pytest.raises(ConfigError, match=r"landscape\.chunk_size"):
        typed({"chunk_size": "eight", "metrics": ["cka"]}, LandscapeConfig, path="landscape")
    again = typed({}, LandscapeConfig, path="landscape")
    assert again == default and again.metrics == [] and again.phase is not None and again.chunk_size != 8
