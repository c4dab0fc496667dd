"""Experiment tracking: logger=csv / tensorboard / wandb, and `log_run` (resolved config + final
metrics, run finished). W&B runs offline here: its files are read back record by record (the
.wandb transaction log) to check that they hold what was logged. No network is ever needed."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT, TINY_ZOO, compose_cfg
from wsl.errors import ConfigError
from wsl.tracking import log_run, make_logger, resolve_wandb_mode, wandb_credentials


# ------------------------------------------------------------------------------------------ helpers

def logger_node(overrides: list[str]):
    """The composed `logger` node as the apps hand it to make_logger (plain, typed by wsl.apps.config)."""
    from wsl.apps.config import plain

    return plain(compose_cfg("zoo", overrides))["logger"]

def read_wandb_records(path: Path) -> list:
    """Every record of a W&B transaction log (`run-<id>.wandb`): LevelDB log framing (32 KiB blocks,
    7-byte chunk headers: crc32 4, length 2, type 1 = full/first/middle/last) after a 7-byte file
    header (':W&B', magic, version), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, records, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # rest of the block is padding
            pos += left
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full record, or last chunk of one
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            records.append(rec)
            parts = []
    return records


def wandb_contents(run_root: Path) -> dict:
    """config, history rows, summary and whether the run was finished, from the offline run files."""
    runs = sorted(run_root.glob("wandb/offline-run-*"))
    assert len(runs) == 1, f"expected one W&B run under {run_root}, found {runs}"
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1, logs
    out = {"config": {}, "history": [], "summary": {}, "exit": None, "dir": runs[0]}
    for rec in read_wandb_records(logs[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            for item in rec.config.update:
                key = item.key or "/".join(item.nested_key)
                out["config"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit"] = rec.exit.exit_code
    return out


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    """A home without `wandb login`, no API key, WANDB_MODE unset."""
    home = tmp_path / "home"
    home.mkdir()
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "wandb"))
    return home


class DigitsSoftmax(L.LightningModule):
    """Multinomial logistic regression on sklearn digits: a real (tiny) training run to track."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self.linear(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train_and_track(logger) -> dict:
    from wsl.data import load_dataset

    data = load_dataset("digits")
    x, y = data.x_train.flatten(1), data.y_train
    torch.manual_seed(0)
    model = DigitsSoftmax()
    trainer = L.Trainer(max_epochs=3, logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True))
    with torch.no_grad():
        acc = (model.linear(data.x_test.flatten(1)).argmax(1) == data.y_test).float().mean().item()
    return {"test": {"acc": acc}, "epochs": trainer.current_epoch, "note": "strings are not metrics"}


CONFIG = {"dataset": {"name": "digits"}, "optim": {"lr": 0.1, "name": "sgd"}, "seeds": [0, 1]}


# ------------------------------------------------------------------------------------------ W&B mode
def test_wandb_mode_falls_back_to_offline_without_credentials(no_wandb_credentials, monkeypatch):
    assert wandb_credentials() is None
    with pytest.warns(UserWarning, match="logging offline"):
        assert resolve_wandb_mode(None) == "offline"
    with pytest.warns(UserWarning, match="logging offline"):  # asked for online, still never a prompt
        assert resolve_wandb_mode("online") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_wandb_mode(None) == "disabled"
        assert resolve_wandb_mode("offline") == "offline"  # the config's explicit mode wins over the env
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old name for offline
    assert resolve_wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'.*online, offline, disabled"):
        resolve_wandb_mode(None)
    with pytest.raises(ConfigError, match="logger.mode='loud'"):
        resolve_wandb_mode("loud")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'"):  # not buried in Hydra's wrapper
        make_logger(logger_node(["logger=wandb"]), no_wandb_credentials / "run")


def test_wandb_mode_online_with_credentials(no_wandb_credentials, monkeypatch):
    netrc = no_wandb_credentials / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_credentials() == str(netrc)
    assert resolve_wandb_mode(None) == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_credentials() == "WANDB_API_KEY" and resolve_wandb_mode(None) == "online"


# ------------------------------------------------------------------------------------------ log_run
def test_log_run_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = make_logger(logger_node(["logger=csv"]), tmp_path / "csv")
    tb_logger = make_logger(logger_node(["logger=tensorboard"]), tmp_path / "tb")
    assert make_logger(logger_node(["logger=none"]), tmp_path) is False
    final = train_and_track([csv_logger, tb_logger])
    flat = log_run([csv_logger, tb_logger], CONFIG, final)
    assert flat == {"final/test/acc": final["test"]["acc"], "final/epochs": 3.0}
    assert final["test"]["acc"] > 0.8  # it did learn: the logged number is a real result

    # CSV: every epoch's loss, then the final row after them; the config beside it
    rows = list(csv.DictReader((tmp_path / "csv" / "logs" / "metrics.csv").open()))
    losses = [r for r in rows if r.get("train/loss")]
    assert len(losses) == 3
    last = rows[-1]
    assert float(last["final/test/acc"]) == pytest.approx(final["test"]["acc"])
    assert int(last["step"]) > max(int(r["step"]) for r in losses)
    assert yaml.safe_load((tmp_path / "csv" / "logs" / "hparams.yaml").read_text()) == CONFIG

    # TensorBoard: scalars and the HParams summary in the event file
    ev = EventAccumulator(str(tmp_path / "tb" / "tb"))
    ev.Reload()
    tags = ev.Tags()
    assert "train/loss" in tags["scalars"] and "final/test/acc" in tags["scalars"]
    assert ev.Scalars("final/test/acc")[-1].value == pytest.approx(final["test"]["acc"], rel=1e-6)
    assert len(ev.Scalars("train/loss")) == 3
    plugins = set(ev.PluginTagToContent("hparams"))
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= plugins


def test_log_run_wandb_offline_files_hold_the_metrics(tmp_path, no_wandb_credentials):
    import wandb

    node = logger_node(["logger=wandb", "logger.tags=[test]"])
    with pytest.warns(UserWarning, match="logging offline"):
        logger = make_logger(node, tmp_path / "run", name="encoder", version="seed0")
    final = train_and_track(logger)
    log_run(logger, CONFIG, final)
    assert wandb.run is None, "log_run must finish the job's W&B run"
    wandb.teardown()  # W&B's service process writes the files; wait until it has closed them

    got = wandb_contents(tmp_path / "run")
    assert got["exit"] == 0  # finished properly, exit code recorded
    assert got["config"]["dataset"] == {"name": "digits"} and got["config"]["seeds"] == [0, 1]
    losses = [h["train/loss"] for h in got["history"] if "train/loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert got["summary"]["final/test/acc"] == pytest.approx(final["test"]["acc"])


def test_wandb_reuses_the_jobs_run_and_finishes_a_stale_one(tmp_path, no_wandb_credentials, monkeypatch):
    """Several trainers of one job (e.g. one encoder per seed) share its run; a run left open by an
    earlier job of the same process (basic launcher multirun) is finished, never written into."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    node = logger_node(["logger=wandb"])
    first = make_logger(node, tmp_path / "job0")
    first.log_metrics({"a": 1.0}, step=0)
    same_job = make_logger(node, tmp_path / "job0", version="seed1")
    assert same_job.experiment is first.experiment
    run0 = wandb.run
    next_job = make_logger(node, tmp_path / "job1")  # job0 never called log_run
    assert wandb.run is None or wandb.run is not run0
    log_run(next_job, {"job": 1}, {"x": 2.0})
    assert wandb.run is None
    wandb.teardown()
    assert wandb_contents(tmp_path / "job0")["exit"] == 0
    assert wandb_contents(tmp_path / "job1")["summary"]["final/x"] == 2.0


# ------------------------------------------------------------------------------------------ apps
@pytest.mark.slow
def test_zoo_app_with_wandb_and_no_login_runs_offline(tmp_path):
    """The real console script, no credentials, WANDB_MODE unset, no terminal: a warning, an offline
    run holding every epoch's metrics, and never a login prompt. (Slow: a whole app in a subprocess
    plus W&B's service; the in-process tests above cover the same code paths.)"""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = [a for a in TINY_ZOO if not a.startswith("logger=")]
    p = subprocess.run([sys.executable, "-m", "wsl.apps.zoo", *args, "logger=wandb", f"zoo.path={tmp_path / 'zoo'}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "logging offline" in p.stderr
    got = wandb_contents(tmp_path / "run")
    assert got["exit"] == 0
    epochs = [h for h in got["history"] if "test_acc_mean" in h]
    assert [h["epoch"] for h in epochs] == [0, 1, 2]  # init + 2 epochs (train.epochs=2)
    assert all(0.0 <= h["test_acc_mean"] <= 1.0 for h in epochs)


def _run_app(app: str, *args: str, monkeypatch) -> int:
    """An app's console-script entry point, in this process (imports shared: seconds, not tens)."""
    import importlib

    monkeypatch.setattr(sys, "argv", [f"wsl-{app.replace('_', '-')}", *args])
    try:
        importlib.import_module(f"wsl.apps.{app}").main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _csv_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(hparams.yaml, metrics.csv rows) of logger=csv in an app's run directory."""
    logs = run_dir / "logs"
    assert (logs / "hparams.yaml").is_file() and (logs / "metrics.csv").is_file(), \
        f"logger=csv wrote nothing in {run_dir}: {sorted(p.name for p in run_dir.rglob('*'))}"
    return yaml.safe_load((logs / "hparams.yaml").read_text()), list(csv.DictReader((logs / "metrics.csv").open()))


def test_apps_log_their_resolved_config_and_final_metrics(tmp_path, tiny_zoo, monkeypatch, capsys,
                                                          restore_hydra_and_logging):
    """wsl-verify, wsl-landscape and wsl-train-generator with logger=csv: the resolved config (every
    override in it, no `???` left) and the app's summary numbers land in <run dir>/logs; the
    generator's per-step rows (its trainer logs there too) are kept, the final row after them."""
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    monkeypatch.chdir(tmp_path)

    # wsl-verify: logger=none by default (a report that writes nothing); logger=csv logs the counts
    assert _run_app("verify", f"zoo.path={zoo}", "checksums=false", "logger=csv",
                    f"hydra.run.dir={tmp_path / 'verify'}", monkeypatch=monkeypatch) == 0
    config, rows = _csv_run(tmp_path / "verify")
    assert config["zoo"]["path"] == str(zoo) and config["checksums"] is False and "logger" not in config
    assert float(rows[-1]["final/errors"]) == 0 and float(rows[-1]["final/models"]) == 4

    # wsl-landscape with a cheap metric: rows written per annotation group
    assert _run_app("landscape", f"zoo.path={zoo}", "landscape.metrics=[spectra]",
                    f"hydra.run.dir={tmp_path / 'landscape'}", monkeypatch=monkeypatch) == 0
    config, rows = _csv_run(tmp_path / "landscape")
    assert config["landscape"]["metrics"] == ["spectra"] and config["zoo"]["path"] == str(zoo)
    assert config["landscape"]["hessian_eig"]["num_samples"] == 2048  # interpolations resolved
    assert float(rows[-1]["final/rows/spectra"]) == 4 and float(rows[-1]["final/rows_total"]) >= 4

    # wsl-train-generator: the trainer's step rows, then the final metrics of the run
    run = tmp_path / "gen"
    assert _run_app("train_generator", f"zoo.path={zoo}", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
                    "spread.every_n_steps=3", "spread.n=8", "progress_refresh_rate=0", "trainer.accelerator=cpu",
                    "threads=1", f"hydra.run.dir={run}", monkeypatch=monkeypatch) == 0
    config, rows = _csv_run(run)
    assert config["trainer"]["max_steps"] == 6 and config["generator"]["method"]["_target_"].endswith("FlowMatching")
    steps = [r for r in rows if r.get("train_loss")]
    assert steps, f"the trainer's rows were lost: {rows}"
    final = rows[-1]
    assert float(final["final/steps"]) == 6 and float(final["final/n_train"]) == 4
    assert float(final["final/metrics/train_loss"]) > 0 and 0 < float(final["final/spread_ratio"])
    assert int(final["step"]) > max(int(r["step"]) for r in steps)
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    assert "logger" not in saved  # what the run stores is unchanged: no logger paths in it
    capsys.readouterr()


def test_lightnings_litlogger_advert_is_dropped(caplog):
    import lightning as L

    from wsl.tracking import _DropAdvert, quiet_lightning

    def tips():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        return [r for r in caplog.records if "Tip" in r.getMessage()]

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        for f in [f for f in lg.filters if isinstance(f, _DropAdvert)]:
            lg.removeFilter(f)
    assert tips()  # Lightning does print it (else this test could not fail)
    quiet_lightning()
    assert not tips()
