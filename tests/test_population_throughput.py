"""Issue 17's fixed-cost cuts keep the numbers: evaluation metrics by matrix products equal logsumexp and
argmax (ties, NaN, overflow included); members evaluated in groups equal all members together;
checkpoints written on the background thread are the same bytes, and its errors reach the commit
naming the file; a link planted at a model directory between two writes is refused."""

import os

import pytest
import torch
import torch.nn.functional as F

from wsl.data import load_dataset
from wsl.nets import MLP
from wsl.population import PopulationModule, stack_state_dicts
from wsl.population.module import member_metrics
from wsl.population.schema import EVAL_CHUNK_NUMBERS, eval_chunk, eval_plan
from wsl.zoo import ShardWriter, Zoo
from wsl.zoo.safe_paths import UnsafePathError


def _classes_first(logits, y):  # the same logits laid out [P, C, n] in memory (the stacked MLP's narrow head)
    return member_metrics(logits.transpose(1, 2).contiguous().transpose(1, 2), y)


@pytest.mark.parametrize("shape, classes, metrics", [((5, 300), 10, member_metrics), ((3, 20, 7), 33, member_metrics),
                                                     ((5, 300), 10, _classes_first)])  # labels [n]; [n, T] (tokens)
def test_member_metrics_equal_logsumexp_and_argmax(shape, classes, metrics):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, classes, generator=g) * 4
    y = torch.randint(0, classes, shape[1:], generator=g)
    logits[0, :8] = 0.0  # all classes tie: argmax is class 0
    logits[1, :8, ..., 3] = logits[1, :8].amax(-1) + 1
    logits[1, :8, ..., 5] = logits[1, :8, ..., 3]  # a tie of two largest: the first one wins
    y[:4] = 5  # ... labels at the second one are wrong, at the first one right
    y[4:6] = 3
    ce, right = metrics(logits, y)
    expect = F.cross_entropy(logits.flatten(0, -2), y.expand(shape[0], *y.shape).flatten(), reduction="none")
    torch.testing.assert_close(ce.flatten(), expect, rtol=1e-5, atol=1e-5)
    assert torch.equal(right, logits.argmax(-1) == y)
    for bad in (float("nan"), 1e30):  # a NaN logit; a difference past float range: the exact path
        odd = logits.clone()
        odd[2].view(-1)[0] = bad
        ce, right = metrics(odd, y)
        assert torch.equal(right, odd.argmax(-1) == y)
        ref = odd.logsumexp(-1) - odd.gather(-1, y.expand(shape[0], *y.shape).unsqueeze(-1)).squeeze(-1)
        assert torch.equal(ce.isnan(), ref.isnan()) and torch.allclose(ce.nan_to_num(), ref.nan_to_num(), atol=1e-5)


def test_eval_plan_groups_wide_nets_within_the_same_activation_budget():
    mib = 2**20
    assert eval_plan(4096, 64, 40, 1642, 32 * mib) == (64, eval_chunk(4096, 64, 40))  # narrow: every member together
    group, chunk = eval_plan(4096, 64, 512, 288778, 32 * mib)  # 74 MB of weights: groups
    assert group < 64 and 64 % group == 0 and chunk >= 256
    assert group * chunk * 512 <= EVAL_CHUNK_NUMBERS
    assert eval_plan(4096, 64, 512, 1018, 32 * mib) == (64, eval_chunk(4096, 64, 512))  # weights in cache: together
    assert eval_plan(100, 64, 512, 288778, 32 * mib)[1] <= 100
    assert eval_plan(4096, 1, 10**6, 10**6, 32 * mib) == (1, eval_chunk(4096, 1, 10**6))


def _digits_population(members: int, width: int = 8, **kwargs):
    """(data, nets, PopulationModule) of `members` digits MLPs of `width`, seeds 0..members-1."""
    data = load_dataset("digits")
    nets = []
    for k in range(members):
        torch.manual_seed(k)
        nets.append(MLP(data.input_shape, data.num_classes, width=width, depth=1))
    return data, nets, PopulationModule(nets[0], stack_state_dicts([n.state_dict() for n in nets]), data, 0.1, 0.0,
                                        **kwargs)


def test_members_evaluated_in_groups_equal_all_together():
    data, nets, mod = _digits_population(5)
    together = mod.evaluate_all()
    mod.eval_group, mod.eval_group_chunk = 2, 37  # groups 2 + 2 + 1, ragged chunks
    grouped = mod.evaluate_all()
    for k, v in together.items():
        torch.testing.assert_close(grouped[k], v, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # and the definition: member 3 alone
        out = nets[3](data.x_test)
    assert abs(float(together["test_loss"][3]) - float(F.cross_entropy(out, data.y_test))) < 1e-5
    assert abs(float(together["test_acc"][3]) - float((out.argmax(1) == data.y_test).double().mean())) < 1e-12


@pytest.fixture
def net():
    torch.manual_seed(0)
    return MLP((1, 6), 3, width=4, depth=1)


def test_background_checkpoints_are_the_same_bytes_and_commit(tmp_path, net):
    sd, arch = net.state_dict(), net.arch
    now = ShardWriter(tmp_path / "a", "job", zoo_name="z")
    later = ShardWriter(tmp_path / "b", "job", zoo_name="z")
    for e in range(3):
        for k in range(4):
            now.write_checkpoint(f"m{k}", e, sd, arch)
            later.write_checkpoint_later(f"m{k}", e, {n: t.clone() for n, t in sd.items()}, arch)
    for w in (now, later):
        for k in range(4):
            w.add_model(f"m{k}", arch, {"k": k}, "trained", {"test_acc": [0.1, 0.2, 0.3]})
        w.commit()
    a, b = Zoo(tmp_path / "a"), Zoo(tmp_path / "b")
    for mid in a.ids:
        assert a.row(mid).checkpoints == b.row(mid).checkpoints  # epochs, paths and sha256
    assert (tmp_path / "a" / a.row("m2").checkpoints[1][1]).read_bytes() == \
        (tmp_path / "b" / b.row("m2").checkpoints[1][1]).read_bytes()
    assert not list((tmp_path / "b").rglob("*.tmp"))


def test_background_write_error_reaches_commit_naming_the_file(tmp_path, net):
    w = ShardWriter(tmp_path / "z", "job")
    (tmp_path / "z" / "models" / "job").mkdir(parents=True)
    (tmp_path / "z" / "models" / "job" / "m1").write_text("a file where the model directory goes")
    w.write_checkpoint_later("m0", 0, net.state_dict(), net.arch)
    w.write_checkpoint_later("m1", 0, net.state_dict(), net.arch)
    with pytest.raises(UnsafePathError, match="m1.*not a directory"):
        w.commit()
    assert not (tmp_path / "z" / "index.h5").exists() and not (tmp_path / "z" / "shards").exists()


def test_link_planted_at_a_model_directory_between_writes_is_refused(tmp_path, net):
    w = ShardWriter(tmp_path / "z", "job")
    w.write_checkpoint("m0", 0, net.state_dict(), net.arch)  # the job and model directories are checked once
    outside = tmp_path / "outside"
    outside.mkdir()
    model_dir = tmp_path / "z" / "models" / "job" / "m0"
    for f in model_dir.iterdir():
        f.unlink()
    model_dir.rmdir()
    os.symlink(outside, model_dir)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        w.write_checkpoint("m0", 1, net.state_dict(), net.arch)
    assert list(outside.iterdir()) == []


def test_weights_take_their_gradients_layout_and_state_dicts_stay_contiguous():
    import lightning as L
    from torch.utils.data import DataLoader

    from wsl.population import PopulationBatchSampler
    from wsl.population.sampler import IndexDataset

    data, nets, mod = _digits_population(3, width=32, steps_per_epoch=3)
    n = data.x_train.shape[0]
    loader = DataLoader(IndexDataset(), batch_size=None, sampler=PopulationBatchSampler(n, n // 3 + 1, [0, 1, 2]))
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu").fit(mod, loader)
    # [P, width, 64]: wsl.population.stacked hands a wide layer's weight gradient over transposed
    weight = dict(zip(mod.names, mod.stacked))["hidden.0.weight"]
    assert not weight.is_contiguous() and weight.transpose(1, 2).is_contiguous()
    sd = mod.member_state_dicts()[2]
    assert all(t.is_contiguous() for t in sd.values()) and torch.equal(sd["hidden.0.weight"], weight[2])
    assert sd.keys() == mod.member_state_dict(2).keys()


def _st_save_sorted(state_dict, metadata):
    """The checkpoint bytes by definition: safetensors.torch.save, its header re-serialized with sorted keys."""
    import json

    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    raw = save({k: v.contiguous() for k, v in state_dict.items()}, metadata=meta)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]


def test_checkpoint_encoding_equals_safetensors_save_byte_for_byte():
    from wsl.nets import ResNet
    from wsl.zoo.writer import encode_checkpoint

    dtypes = [torch.float32, torch.int64, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.float64,
              torch.int32, torch.int8, torch.int16]
    g = torch.Generator().manual_seed(0)
    cases = [(ResNet((1, 8, 8), 10, width=4, depth=1).state_dict(), {"arch": {"name": "resnet"}, "epoch": "3"}),
             ({"w": torch.randn(3, 4).t()}, {})]  # a transposed tensor; metadata left empty
    for _ in range(60):  # random names, dtypes (mixed: safetensors orders larger dtypes first), shapes (empty too)
        sd = {}
        for _ in range(int(torch.randint(1, 6, (1,), generator=g))):
            dt = dtypes[int(torch.randint(0, len(dtypes), (1,), generator=g))]
            shape = torch.randint(0, 4, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g).tolist()
            sd[f"t{int(torch.randint(0, 20, (1,), generator=g))}.w"] = (torch.randn(shape, generator=g) * 5).to(dt)
        cases.append((sd, {"model_id": "m\u00e9", "arch": {"width": [1, 2]}}))
    for sd, meta in cases:
        assert encode_checkpoint(sd, meta) == _st_save_sorted(sd, meta)
    odd = {"c": torch.zeros(2, dtype=torch.complex64)}  # a dtype outside the table: safetensors itself
    assert encode_checkpoint(odd, {"a": "b"}) == _st_save_sorted(odd, {"a": "b"})
