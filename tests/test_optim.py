"""Parameter groups, the triangle schedule, lookahead, and the per-epoch freezing of fastnet's whitening bias."""

import pytest
import torch
import torch.nn.functional as F

from imagefit.config import Config
from imagefit.errors import ImagefitError
from imagefit.models import create_model
from imagefit.training.optim import Lookahead, build_optimizer, build_schedule


def fastnet_config(**optim) -> Config:
    cfg = Config.from_dict({"model": {"model": "fastnet-small", "whiten_bias_epochs": 1},
                            "optim": {"lr": 0.5, "weight_decay": 0.01, **optim}})
    return cfg.validate()


def test_batchnorm_shifts_get_the_scaled_rate_and_frozen_scales_no_group():
    cfg = fastnet_config(norm_lr_scale=64, decay_biases=True)
    model = create_model(10, cfg.model)
    weights, norms, biases = build_optimizer(model, cfg).param_groups
    bn_shifts = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in norms["params"]} == {id(p) for p in bn_shifts}  # BN scales are frozen: in no group
    assert norms["lr"] == pytest.approx(32.0) and norms["weight_decay"] == pytest.approx(0.01 / 64)
    assert [p is model.whiten.bias for p in biases["params"]] == [True]
    assert biases["lr"] == 0.5 and biases["weight_decay"] == 0.01 and weights["weight_decay"] == 0.01
    assert not any(p is model.whiten.weight for g in (weights, norms, biases) for p in g["params"])

    plain = build_optimizer(model, fastnet_config()).param_groups
    assert plain[1]["lr"] == 0.5 and plain[1]["weight_decay"] == 0 and plain[2]["weight_decay"] == 0


def schedule_rates(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int, steps: int) -> list[float]:
    """The first group's rate at each of `steps` steps of the config's schedule."""
    sched = build_schedule(opt, cfg, steps_per_epoch)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_triangle_schedule_warms_up_linearly_and_ends_at_zero():
    cfg = fastnet_config()
    cfg.schedule.schedule, cfg.schedule.warmup, cfg.schedule.div_factor, cfg.train.epochs = "triangle", 0.2, 5, 2
    opt = build_optimizer(create_model(10, cfg.model), cfg)
    rates = schedule_rates(opt, cfg, steps_per_epoch=25, steps=51)  # 50 steps, peak at 10
    assert rates[0] == pytest.approx(0.1) and rates[5] == pytest.approx(0.3) and rates[10] == pytest.approx(0.5)
    assert rates[30] == pytest.approx(0.25) and rates[50] == 0.0
    assert max(rates) == pytest.approx(0.5)


def test_lookahead_averages_late_and_ends_on_the_slow_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    look = Lookahead(model, every=2, total_steps=4)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    look.step(model, 1)  # not a multiple of `every`: nothing happens
    assert model.weight.equal(start + 1)
    look.step(model, 2)  # decay 0.95^2 · (2/4)^3: the slow copy moves most of the way
    decay = 0.95 ** 2 * 0.5 ** 3
    expected = start + (1 - decay)
    assert torch.allclose(model.weight, expected) and torch.allclose(look.slow["weight"], expected)
    with torch.no_grad():
        model.weight.add_(5.0)
    look.finish(model)  # back to the slow copy
    assert torch.allclose(model.weight, expected)


def test_whitening_bias_learns_only_in_its_epochs():
    cfg = fastnet_config()
    torch.manual_seed(0)
    model = create_model(10, cfg.model)
    opt = build_optimizer(model, cfg)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def step(epoch):
        model.set_epoch(epoch)
        before = model.whiten.bias.detach().clone(), model.fc.weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return not model.whiten.bias.equal(before[0]), not model.fc.weight.equal(before[1])

    assert step(0) == (True, True)
    assert step(1) == (False, True)


def test_muon_groups_without_orthogonal_match_torch_sgd():
    from imagefit.training.optim import Muon
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = Muon([{"params": a.parameters(), "weight_decay": 0.01}], lr=0.1, momentum=0.85)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for _ in range(3):
        x = torch.randn(5, 4)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_muon_filter_steps_are_orthogonal_and_of_fixed_size():
    from imagefit.training.optim import orthogonalize
    torch.manual_seed(0)
    g = torch.randn(16, 72) * torch.logspace(-3, 1, 72)  # badly conditioned, like a gradient
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.3 and s.max() < 1.7  # every direction moves by about the same amount
    cfg = fastnet_config()
    cfg.optim.optimizer = "muon"
    model = create_model(10, cfg.model)
    opt = build_optimizer(model, cfg)
    conv = model.layers[0].conv1.weight
    assert opt.param_groups[-1]["orthogonal"] and any(p is conv for p in opt.param_groups[-1]["params"])
    assert not any(p is conv for g in opt.param_groups[:-1] for p in g["params"])
    before = conv.detach().clone()
    F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    step = conv.detach() - before * (len(conv) ** 0.5 / before.norm())
    assert torch.allclose(step.norm(), torch.tensor(0.24 * len(conv) ** 0.5), rtol=0.5)


def test_cyclic_schedule_restarts_at_the_peak_each_cycle():
    cfg = Config()
    cfg.schedule.schedule, cfg.schedule.cycles, cfg.train.epochs, cfg.optim.lr = "cyclic", 2, 4, 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    rates = schedule_rates(opt, cfg, steps_per_epoch=5, steps=20)  # 20 steps, cycles of 10
    assert rates[0] == rates[10] == pytest.approx(0.1) and rates[9] < 0.01 and rates[19] < 0.01
    assert rates[5] == pytest.approx(0.05)
    cfg.train.epochs = 5
    with pytest.raises(ImagefitError, match="not a multiple of --cycles 2"):
        cfg.validate()
