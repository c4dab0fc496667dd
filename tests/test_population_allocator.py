"""population.retain_memory: glibc keeps the memory a population frees (wsl.population.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from conftest import TINY_ZOO, typed_zoo
from wsl.apps.zoo_job import stored_config
from wsl.errors import ConfigError

# 10 training steps of 32 MLPs 40-128-128-10 (4 MiB activations each) after a warm-up, in a fresh process: the
# minor page faults per step. With glibc's defaults this measured ~2,000 per step (every step's buffers faulted
# back in), with retained memory 0.3-52 (the heap still growing now and then).
STEPS = textwrap.dedent("""
    import resource, torch
    from wsl.population import allocator
    from wsl.data import load_dataset
    from wsl.nets import MLP
    from wsl.population.functional import stack_state_dicts
    from wsl.population.module import PopulationModule

    torch.set_num_threads(1)
    before = allocator.retained()
    applied = [allocator.retain_freed_memory(), allocator.retain_freed_memory()]  # the second: already set
    P, data = 32, load_dataset("mnist1d")
    nets = [MLP((1, 40), 10, width=128, depth=2) for _ in range(P)]
    m = PopulationModule(nets[0], stack_state_dicts([n.state_dict() for n in nets]), data, [0.05] * P, [0.0] * P)
    opt = m.configure_optimizers()["optimizer"]
    idx = torch.stack([torch.randperm(3000)[:128] for _ in range(P)])

    def step():
        m.training_step(idx, 0).backward()
        m.on_after_backward()
        opt.step()
        opt.zero_grad()

    for _ in range(5):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(before, *applied, allocator.retained(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt thresholds exist in glibc only; elsewhere retain_freed_memory changes nothing")
def test_retained_memory_keeps_training_steps_free_of_page_faults():
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, first, second, after, faults = out.stdout.split()
    assert (before, first, second, after) == ("False", "True", "True", "True")
    # 250 pages = 1 MiB a step, a quarter of one activation: the buffers are not faulted back in every step
    assert float(faults) < 250, f"{faults} page faults per step with retained memory"


def test_retain_memory_is_not_stored_with_the_job(tmp_path):
    base = [f"zoo.path={tmp_path / 'z'}", *TINY_ZOO]
    off = stored_config(typed_zoo([*base, "population.retain_memory=false"]))
    assert "retain_memory" not in off["population"]
    assert off == stored_config(typed_zoo(base))  # the same job (ids, resume) either way


def test_bad_retain_memory_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="population.retain_memory") as e:
        typed_zoo([f"zoo.path={tmp_path / 'z'}", *TINY_ZOO, "population.retain_memory=sometimes"])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "z").exists()


def test_off_glibc_malloc_is_left_alone(monkeypatch):
    from wsl.population import allocator

    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert allocator.retain_freed_memory() is False
    assert allocator.retained() is False
