"""The stored phase label feeds the encoder task `task=phase`, end to end: a zoo trained by wsl-zoo,
its landscape metrics and labels written by wsl-landscape, and wsl-train-encoder classifying them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import compose_cfg, make_zoo, run_cli
from wsl.errors import ConfigError
from wsl.zoo import Zoo

PHASE_METRICS = ["landscape=full", "landscape.metrics=[mode_connectivity,cka]", "landscape.num_samples=300",
                 "landscape.mode_connectivity.steps=10", "landscape.mode_connectivity.points=5"]


@pytest.fixture(scope="module")
def phase_zoo(tmp_path_factory):
    """6 learning rates x 2 seeds (12 digits MLPs, 3 epochs): cells from underfitted to well fitted."""
    path = tmp_path_factory.mktemp("phase") / "zoo"
    make_zoo(path, ["net.width=8", "population.size=12", "train.epochs=3",
                    "train.lr=[0.5,0.2,0.1,0.03,0.01,0.003]"])
    return path


def test_phase_task_reads_the_label_written_by_wsl_landscape(phase_zoo, tmp_path):
    task = compose_cfg("train_encoder", ["zoo.path=x", "task=phase"]).task
    assert list(task.columns) == ["phase/label"]
    from hydra.utils import instantiate

    phase_task = instantiate(task, _convert_="all")
    zoo = Zoo(phase_zoo)
    with pytest.raises(ConfigError, match=r"task=phase: column 'phase/label' is missing from the zoo's index"):
        phase_task.targets(zoo.table(), zoo.ids)  # before wsl-landscape: the missing column is named

    # a loss threshold between the cells' train losses, so that both sides of the taxonomy occur
    t = zoo.table()
    cell_loss = t.groupby("lr")["train_loss"].mean()
    assert cell_loss.min() < cell_loss.max()
    cut = float(np.sort(cell_loss.to_numpy())[2:4].mean())
    p = run_cli("landscape", f"zoo.path={phase_zoo}", *PHASE_METRICS, f"landscape.phase.loss={cut}",
                f"hydra.run.dir={tmp_path / 'landscape-run'}", check=True)
    assert "phase 12 rows" in p.stdout

    t = Zoo(phase_zoo).table()
    labels = t["phase/label"]
    assert labels.str.len().gt(0).all() and (t.groupby("lr")["phase/label"].nunique() == 1).all()
    high = t[t.lr.map(cell_loss) > cut]
    low = t[t.lr.map(cell_loss) <= cut]
    assert high["phase/label"].isin(["I", "II", "I/II"]).all() and low["phase/label"].isin(
        ["III", "IV-A", "IV-B", "IV"]).all()
    targets = phase_task.targets(t, list(t.index))
    assert targets.classes == sorted(set(labels)) and len(targets.classes) >= 2
    assert [targets.classes[i] for i in targets.y.tolist()] == labels.tolist()

    r = run_cli("train_encoder", f"zoo.path={phase_zoo}", "task=phase", "encoder=stats", "seeds=[0]",
                "trainer.max_epochs=2", "split.fractions=[0.5,0.25,0.25]", "logger=none",
                f"hydra.run.dir={tmp_path / 'encoder-run'}", check=True, timeout=600)
    df = pd.read_csv(tmp_path / "encoder-run" / "results.csv")
    assert (df["task"] == "phase").all()
    acc = float(df.loc[df["seed"] == "0", "test/acc"].iloc[0])
    assert 0.0 <= acc <= 1.0
    assert "| stats | phase |" in r.stdout
    assert "Tip" not in r.stdout + r.stderr and "LeafSpec" not in r.stderr  # Lightning's noise, dropped
