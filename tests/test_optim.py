"""build_optimizer: which parameters get weight decay (matrices only: not norms, biases or embeddings,
and a head tied to the embedding counts as an embedding), and the settings it hands AdamW.
The lr schedules' main tests are in test_rules.py; here the edge cases mutation testing found untested."""
import pytest
import torch
from torch import nn

from model.config import GPTConfig
from model.gpt import GPT
from train.optim import Schedule, build_optimizer


class Toy(nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.frozen = nn.Linear(6, 6, bias=False)  # first: the parameters after it must still be grouped
        self.frozen.weight.requires_grad_(False)
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6, 6, bias=True)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11, bias=False)
        if tied:
            self.head.weight = self.emb.weight


def groups(optimizer):
    """{weight_decay: set of parameter ids} over the optimizer's groups."""
    out = {}
    for g in optimizer.param_groups:
        out.setdefault(g["weight_decay"], set()).update(id(p) for p in g["params"])
    return out


def test_decay_on_matrices_only_and_frozen_parameters_left_out():
    m = Toy(tied=False)
    opt = build_optimizer(m, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.1)
    g = groups(opt)
    assert g[0.1] == {id(m.lin.weight), id(m.head.weight)}
    assert g[0.0] == {id(m.emb.weight), id(m.lin.bias), id(m.norm.weight), id(m.norm.bias)}
    assert id(m.frozen.weight) not in g[0.1] | g[0.0]
    for group in opt.param_groups:
        assert (group["lr"], group["betas"], group["eps"]) == (0.01, (0.8, 0.95), 1e-7)


def test_a_head_tied_to_the_embedding_is_not_decayed_and_appears_once():
    m = Toy(tied=True)
    opt = build_optimizer(m, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    g = groups(opt)
    assert g[0.1] == {id(m.lin.weight)}
    assert id(m.emb.weight) in g[0.0]
    listed = [id(p) for group in opt.param_groups for p in group["params"]]
    assert len(listed) == len(set(listed)) == 5  # emb (= head), lin weight and bias, norm weight and bias


def test_gpt_decays_every_matrix_but_the_embeddings():
    for tied, rotary in ((False, True), (True, False)):
        model = GPT(GPTConfig(width=32, depth=2, heads=2, seq_len=16, tied_embeddings=tied, rotary=rotary,
                              kernels="torch"))
        decayed = groups(build_optimizer(model, 0.01, 0.9, 0.99, 1e-8, 0.1))[0.1]
        names = {n for n, p in model.named_parameters() if id(p) in decayed}
        assert names == {n for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n}
        assert ("head.weight" in names) is not tied


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_a_single_warmup_step_is_already_the_peak(kind):
    assert Schedule(kind, peak=2.0, steps=11, warmup=1, min_ratio=0.1)(0) == pytest.approx(2.0)


def test_the_shortest_cosine_runs_end_at_their_floor():
    # 2 steps: the peak, then the floor; 1 step: the peak only
    assert [Schedule("cosine", peak=1.0, steps=2, min_ratio=0.1)(s) for s in range(2)] == pytest.approx([1.0, 0.1])
    assert Schedule("cosine", peak=1.0, steps=1, min_ratio=0.1)(0) == pytest.approx(1.0)
    # one warmup step and two more: peak, peak, floor
    assert [Schedule("cosine", peak=1.0, steps=3, warmup=1, min_ratio=0.1)(s) for s in range(3)] == \
        pytest.approx([1.0, 1.0, 0.1])


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_past_the_last_step_the_lr_stays_at_the_floor(kind):
    # the loop never asks beyond the run, but the decay is clamped there rather than turning back up
    s = Schedule(kind, peak=1.0, steps=10, min_ratio=0.1)
    assert [s(step) for step in (9, 10, 15)] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.gpu
def test_fused_adamw_on_cuda_only():
    assert build_optimizer(Toy(tied=False).cuda(), 0.01, 0.9, 0.99, 1e-8, 0.1).defaults["fused"] is True
    assert not build_optimizer(Toy(tied=False), 0.01, 0.9, 0.99, 1e-8, 0.1).defaults["fused"]
