"""Task weighting strategies: published update rules, fixes, state round trips, errors."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from distmtl.errors import DistmtlError
from distmtl.weighting import WEIGHTINGS, WeightingStrategy, create_weighting

TASKS = ["a", "b"]


@pytest.fixture(autouse=True)
def _single_thread():
    """The models here are tiny: intra-op threads only add contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(float(value))


def losses_of(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": scalar(a), "b": scalar(b)}


# ------------------------------------------------------------------------------ registry, errors


def test_registry_names_match_classes():
    assert set(WEIGHTINGS) == {"equal", "initial", "uncertainty", "dwa", "gradnorm", "dynamic", "jd"}
    for name, cls in WEIGHTINGS.items():
        assert issubclass(cls, WeightingStrategy)
        assert cls.name == name
        options = {"feature_dim": 4} if name == "dynamic" else {}
        strategy = create_weighting(name, TASKS, **options)
        assert isinstance(strategy, cls)
        assert strategy.task_names == ("a", "b")
        assert set(strategy.weights) == {"a", "b"}


def test_flags():
    assert WEIGHTINGS["dynamic"].needs_features and WEIGHTINGS["dynamic"].owns_optimizer
    assert WEIGHTINGS["gradnorm"].needs_shared_parameters and WEIGHTINGS["gradnorm"].owns_optimizer
    assert not WEIGHTINGS["uncertainty"].owns_optimizer
    unc = create_weighting("uncertainty", TASKS)
    assert unc.main_optimizer_parameters() == [unc.log_vars]
    assert create_weighting("gradnorm", TASKS).main_optimizer_parameters() == []
    assert create_weighting("dynamic", TASKS, feature_dim=3).main_optimizer_parameters() == []


def test_unknown_weighting_name():
    with pytest.raises(DistmtlError) as raised:
        create_weighting("gradnrom", TASKS)
    assert str(raised.value) == (
        "unknown weighting 'gradnrom' (did you mean: gradnorm?); "
        "known: dwa, dynamic, equal, gradnorm, initial, jd, uncertainty"
    )
    with pytest.raises(DistmtlError, match=r"unknown weighting 'zzz'; known: "):
        create_weighting("zzz", TASKS)


def test_unknown_and_missing_options():
    did_you_mean = r"unknown option 'temprature' \(did you mean: temperature\?\)"
    with pytest.raises(DistmtlError, match=did_you_mean):
        create_weighting("dwa", TASKS, temprature=2.0)
    no_match = r"weighting 'uncertainty': unknown option 'lr'; known: init_log_var$"
    with pytest.raises(DistmtlError, match=no_match):
        create_weighting("uncertainty", TASKS, lr=0.1)
    with pytest.raises(DistmtlError, match="option 'feature_dim' is required"):
        create_weighting("dynamic", TASKS)
    with pytest.raises(DistmtlError, match="option 'temperature' must be positive"):
        create_weighting("dwa", TASKS, temperature=0)
    with pytest.raises(DistmtlError, match="option 'normalize' must be true or false"):
        create_weighting("dynamic", TASKS, feature_dim=3, normalize="yes")
    with pytest.raises(DistmtlError, match=r"option 'weights' names unknown task 'c'"):
        create_weighting("equal", TASKS, weights={"c": 1.0})
    with pytest.raises(DistmtlError, match="duplicate task 'a'"):
        create_weighting("equal", ["a", "a"])
    with pytest.raises(DistmtlError, match="task names must be a list"):
        create_weighting("equal", "ab")


def test_bad_losses_and_missing_inputs():
    eq = create_weighting("equal", TASKS)
    with pytest.raises(DistmtlError, match=r"loss for unknown task 'c'"):
        eq({"a": scalar(1), "c": scalar(1)})
    with pytest.raises(DistmtlError, match="no task losses"):
        eq({})
    with pytest.raises(DistmtlError, match="must be a scalar tensor"):
        eq({"a": torch.ones(3)})
    with pytest.raises(DistmtlError, match="needs the pooled shared features"):
        create_weighting("dynamic", TASKS, feature_dim=3)(losses_of(1, 1))
    with pytest.raises(DistmtlError, match=r"features must have shape \[batch, 3\]"):
        dynamic = create_weighting("dynamic", TASKS, feature_dim=3)
        dynamic(losses_of(1, 1), features=torch.ones(2, 4))
    with pytest.raises(DistmtlError, match="needs the parameters of the last shared layer"):
        create_weighting("gradnorm", TASKS).train()(losses_of(1, 1))


# ------------------------------------------------------------------------------ equal


def test_equal_uses_configured_weights_and_skips_absent_tasks():
    eq = create_weighting("equal", ["a", "b", "c"], weights={"b": 0.5, "c": 2})
    total = eq({"a": scalar(1.0), "b": scalar(4.0), "c": scalar(3.0)})
    assert total.item() == pytest.approx(1.0 + 2.0 + 6.0)
    assert eq.weights == {"a": 1.0, "b": 0.5, "c": 2.0}
    # a batch without labels for 'c'
    assert eq({"a": scalar(1.0), "b": scalar(4.0)}).item() == pytest.approx(3.0)


# ------------------------------------------------------------------------------ uncertainty


def test_uncertainty_matches_published_update():
    """total = sum_i exp(-s_i) L_i + s_i; plain SGD on s by hand: s <- s - lr (1 - exp(-s) L)."""
    lr = 0.1
    sequence = [(2.0, 0.5), (1.5, 0.4), (1.0, 0.6), (3.0, 0.2)]
    unc = create_weighting("uncertainty", TASKS)
    unc.train()
    optimizer = torch.optim.SGD(unc.main_optimizer_parameters(), lr=lr)
    expected = [0.0, 0.0]
    for la, lb in sequence:
        total = unc(losses_of(la, lb))
        want_total = sum(math.exp(-s) * loss + s for s, loss in zip(expected, (la, lb)))
        assert total.item() == pytest.approx(want_total, rel=1e-6)
        assert unc.weights["a"] == pytest.approx(math.exp(-expected[0]), rel=1e-6)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        expected = [s - lr * (1.0 - math.exp(-s) * loss) for s, loss in zip(expected, (la, lb))]
    assert unc.log_vars.tolist() == pytest.approx(expected, rel=1e-5)
    # the task with the larger losses ends with the larger variance, i.e. the smaller weight
    assert expected[0] > 0 > expected[1]


def test_uncertainty_fixed_point_is_log_loss():
    unc = create_weighting("uncertainty", TASKS)
    optimizer = torch.optim.SGD(unc.main_optimizer_parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        unc(losses_of(4.0, 0.25)).backward()
        optimizer.step()
    assert unc.log_vars.tolist() == pytest.approx([math.log(4.0), math.log(0.25)], abs=1e-3)


# ------------------------------------------------------------------------------ dwa


def dwa_expected(previous: list[float], before: list[float], temperature: float = 2.0):
    ratios = [p / q for p, q in zip(previous, before)]
    exps = [math.exp(r / temperature) for r in ratios]
    return [len(exps) * e / sum(exps) for e in exps]


def test_dwa_matches_formula_on_hand_made_epochs():
    dwa = create_weighting("dwa", TASKS)
    dwa.train()
    epochs = [
        [(1.0, 4.0), (3.0, 4.0)],  # averages a=2, b=4
        [(1.0, 2.0), (1.0, 4.0)],  # a=1, b=3
        [(0.5, 3.0), (0.5, 3.0)],  # a=0.5, b=3
        [(0.2, 1.0)],
    ]
    expected_weights = [
        [1.0, 1.0],
        [1.0, 1.0],
        dwa_expected([1.0, 3.0], [2.0, 4.0]),
        dwa_expected([0.5, 3.0], [1.0, 3.0]),
    ]
    for batches, want in zip(epochs, expected_weights):
        for la, lb in batches:
            total = dwa(losses_of(la, lb))
            assert [dwa.weights["a"], dwa.weights["b"]] == pytest.approx(want, rel=1e-6)
            assert total.item() == pytest.approx(want[0] * la + want[1] * lb, rel=1e-6)
        # evaluation forwards do not count towards the epoch averages
        dwa.eval()
        dwa(losses_of(100.0, 100.0))
        dwa.train()
        dwa.on_train_epoch_end()
    assert sum(expected_weights[2]) == pytest.approx(2.0)
    # 'b' fell more slowly in epoch 2 (3/4 against 1/2), so it gets the larger weight
    assert expected_weights[2][1] > expected_weights[2][0]
    assert int(dwa.epochs_completed) == 4


def test_dwa_temperature_and_empty_epoch():
    dwa = create_weighting("dwa", TASKS, temperature=0.5)
    dwa.train()
    for la, lb in [(2.0, 2.0), (1.0, 3.0)]:
        dwa(losses_of(la, lb))
        dwa.on_train_epoch_end()
    dwa.on_train_epoch_end()  # no training step: nothing rolls
    dwa(losses_of(1.0, 1.0))
    assert [dwa.weights["a"], dwa.weights["b"]] == pytest.approx(
        dwa_expected([1.0, 3.0], [2.0, 2.0], temperature=0.5), rel=1e-6
    )


# ------------------------------------------------------------------------------ gradnorm


class ToyTwoTask(nn.Module):
    """Shared layer + two heads; task 'b''s loss is ``scale`` times larger than a comparable 'a'."""

    def __init__(self, seed: int, scale: float):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(256, 8, generator=generator)
        self.ya = torch.tanh(self.x @ torch.randn(8, 2, generator=generator))
        self.yb = torch.tanh(self.x @ torch.randn(8, 2, generator=generator))
        torch.manual_seed(seed)
        self.shared = nn.Linear(8, 16)
        self.head_a = nn.Linear(16, 2)
        self.head_b = nn.Linear(16, 2)
        self.scale = scale

    def losses(self) -> dict[str, torch.Tensor]:
        z = torch.tanh(self.shared(self.x))
        return {
            "a": ((self.head_a(z) - self.ya) ** 2).mean(),
            "b": self.scale * ((self.head_b(z) - self.yb) ** 2).mean(),
        }

    def grad_norms(self, weights: dict[str, float]) -> dict[str, float]:
        """G_i = ||grad_W (w_i L_i)|| on the shared layer's weight."""
        return {
            task: weights[task]
            * torch.autograd.grad(loss, [self.shared.weight], retain_graph=True)[0].norm().item()
            for task, loss in self.losses().items()
        }


def train_toy(name: str, *, seed: int, scale: float, lr: float, steps: int = 200, **options):
    model = ToyTwoTask(seed, scale)
    strategy = create_weighting(name, TASKS, **options)
    strategy.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        total = strategy(model.losses(), shared_parameters=[model.shared.weight])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    if name == "gradnorm":
        weights = dict(zip(TASKS, strategy.task_weights.tolist()))
    else:
        weights = strategy.weights
    return model.grad_norms(weights), weights


@pytest.mark.parametrize("seed", [0, 1])
def test_gradnorm_equalises_gradient_norms(seed):
    """Losses 10x apart in scale. With the network moving slowly the loss ratios stay near 1, so
    GradNorm's target (default alpha) is equal norms; with alpha=0 it is equal norms even while the
    network trains fast. Equal weighting leaves the norms far apart."""
    for kwargs in ({"lr": 1e-4}, {"lr": 1e-2, "alpha": 0.0}):
        lr = kwargs.pop("lr")
        g_equal, _ = train_toy("equal", seed=seed, scale=10.0, lr=lr)
        g_norm, weights = train_toy("gradnorm", seed=seed, scale=10.0, lr=lr, **kwargs)
        assert not 0.8 < g_equal["a"] / g_equal["b"] < 1.25
        assert 0.8 < g_norm["a"] / g_norm["b"] < 1.25
        assert sum(weights.values()) == pytest.approx(2.0, rel=1e-5)
        assert weights["a"] > 3 * weights["b"]  # the large-scale task is weighted down


def gradnorm_by_hand(sequence, p, *, alpha, lr, betas=(0.9, 0.999), eps=1e-8):
    """The published update with Adam written out, for L_i = k_i * sum(p^2) on shared p."""
    norm_p = math.sqrt(sum(x * x for x in p))
    s = sum(x * x for x in p)
    w, m, v = [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]
    first = None
    out = []
    for t, ks in enumerate(sequence, start=1):
        losses = [k * s for k in ks]
        first = first or losses
        total = sum(wi * li for wi, li in zip(w, losses))
        grad_norms = [2 * k * norm_p for k in ks]  # ||grad_p L_i||
        g = [wi * n for wi, n in zip(w, grad_norms)]
        ratios = [li / l0 for li, l0 in zip(losses, first)]
        relative = [r / (sum(ratios) / 2) for r in ratios]
        targets = [sum(g) / 2 * r**alpha for r in relative]
        grads = [math.copysign(1.0, gi - ti) * n for gi, ti, n in zip(g, targets, grad_norms)]
        for i in range(2):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * grads[i]
            v[i] = betas[1] * v[i] + (1 - betas[1]) * grads[i] ** 2
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            w[i] = max(w[i] - lr * m_hat / (math.sqrt(v_hat) + eps), 1e-4)
        w = [2 * wi / sum(w) for wi in w]
        out.append((total, list(w)))
    return out


@pytest.mark.parametrize("alpha", [1.5, 0.0])
def test_gradnorm_matches_published_update(alpha):
    # step 2 has nearly balanced norms but task 'a' trains far slower (r = 8 against 0.8):
    # the sign of a's update depends on alpha
    sequence = [(1.0, 10.0), (8.0, 8.0), (2.0, 1.0), (4.0, 3.0), (0.5, 2.0)]
    p_values = [0.5, -1.0, 2.0]
    strategy = create_weighting("gradnorm", TASKS, alpha=alpha, lr=0.05).train()
    shared = nn.Parameter(torch.tensor(p_values))
    expected = gradnorm_by_hand(sequence, p_values, alpha=alpha, lr=0.05)
    for (ka, kb), (want_total, want_w) in zip(sequence, expected):
        losses = {"a": ka * (shared**2).sum(), "b": kb * (shared**2).sum()}
        total = strategy(losses, shared_parameters=[shared])
        assert total.item() == pytest.approx(want_total, rel=1e-5)
        assert strategy.task_weights.tolist() == pytest.approx(want_w, rel=1e-5)
    assert shared.grad is None
    directions = [w[0] for _, w in expected[:2]]
    if alpha == 0.0:
        assert directions[1] < directions[0]  # equalising norms alone lowers w_a at step 2
    else:
        assert directions[1] > directions[0]  # the slow task's weight goes up


def test_gradnorm_network_backward_is_untouched():
    model = ToyTwoTask(0, 10.0)
    strategy = create_weighting("gradnorm", TASKS)
    strategy.train()
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([1.5, 0.5]))
    losses = model.losses()
    total = strategy(losses, shared_parameters=[model.shared.weight])
    assert total.item() == pytest.approx(1.5 * losses["a"].item() + 0.5 * losses["b"].item())
    assert strategy.weights == pytest.approx({"a": 1.5, "b": 0.5})
    total.backward()  # the graph survives the per-task gradients
    reference = ToyTwoTask(0, 10.0)
    ref_losses = reference.losses()
    (1.5 * ref_losses["a"] + 0.5 * ref_losses["b"]).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert strategy.task_weights.grad is None
    # the weights moved, stay positive and sum to T
    assert strategy.task_weights.tolist() != pytest.approx([1.5, 0.5])
    assert strategy.task_weights.sum().item() == pytest.approx(2.0)
    assert (strategy.task_weights > 0).all()


def test_gradnorm_eval_mode_only_computes():
    model = ToyTwoTask(0, 10.0)
    strategy = create_weighting("gradnorm", TASKS).eval()
    before = strategy.task_weights.clone()
    strategy(model.losses())  # no shared parameters needed in eval mode
    strategy(model.losses(), shared_parameters=[model.shared.weight])
    torch.testing.assert_close(strategy.task_weights.detach(), before)
    assert torch.isnan(strategy.initial_losses).all()


# ------------------------------------------------------------------------------ dynamic


FEATURES = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))


def run_dynamic(sequence, **options):
    strategy = create_weighting("dynamic", TASKS, feature_dim=8, **options)
    strategy.train()
    for la, lb in sequence:
        strategy(losses_of(la, lb), features=FEATURES)
    strategy.eval()
    strategy(losses_of(1.0, 1.0), features=FEATURES)
    return strategy.weights


def test_dynamic_favours_task_with_larger_normalised_loss():
    # initial values 2 and 10; afterwards both losses are 10: 'a' is at 5x its initial value
    sequence = [(2.0, 10.0)] + [(10.0, 10.0)] * 30
    weights = run_dynamic(sequence, init_steps=1)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert weights["a"] > 0.7 > 0.3 > weights["b"]


def test_dynamic_starts_uniform_and_sums_to_one():
    strategy = create_weighting("dynamic", ["a", "b", "c"], feature_dim=8)
    assert strategy.weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    strategy.train()
    for step in range(5):
        strategy({"a": scalar(1 + step), "b": scalar(2.0), "c": scalar(0.5)}, features=FEATURES)
        assert sum(strategy.weights.values()) == pytest.approx(1.0, abs=1e-6)


def test_dynamic_normalize_fixes_scale_bias():
    """A 100x-scale task at a constant loss against a small task whose loss grows 5x."""
    sequence = [(100.0, 1.0)] + [(100.0, 5.0)] * 30
    normalized = run_dynamic(sequence, init_steps=1, normalize=True)
    raw = run_dynamic(sequence, init_steps=1, normalize=False)
    assert normalized["b"] > normalized["a"]
    assert raw["a"] > raw["b"]


def test_dynamic_running_initial_value():
    strategy = create_weighting("dynamic", TASKS, feature_dim=8, init_steps=3)
    strategy.train()
    for la, lb in [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (100.0, 100.0)]:
        strategy(losses_of(la, lb), features=FEATURES)
    assert strategy.initial_loss_count.tolist() == [3, 3]
    index = torch.tensor([0, 1])
    normalized = strategy.normalized_losses(index, torch.tensor([6.0, 8.0]))
    assert normalized.tolist() == pytest.approx([6.0 / 3.0, 8.0 / 4.0])


class FeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(8, 8)
        self.head_a = nn.Linear(8, 1)
        self.head_b = nn.Linear(8, 1)

    def forward(self, x):
        h = self.backbone(x)
        losses = {"a": self.head_a(h).pow(2).mean(), "b": 3 * self.head_b(h).pow(2).mean()}
        return h, losses


@pytest.mark.parametrize("detach", [True, False])
def test_dynamic_weight_layer_gets_no_network_gradient(detach):
    net = FeatureNet()
    strategy = create_weighting("dynamic", TASKS, feature_dim=8, detach=detach)
    strategy.train()
    for _ in range(3):  # move the weight layer away from its zero initialisation
        h, losses = net(FEATURES)
        strategy(losses, features=h)
    strategy.eval()
    h, losses = net(FEATURES)
    total = strategy(losses, features=h)
    w = strategy.weights
    expected = w["a"] * losses["a"].item() + w["b"] * losses["b"].item()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    layer_grads = [p.grad for p in strategy.weight_layer.parameters()]
    if detach:
        assert all(g is None or not g.any() for g in layer_grads)
    else:  # the original: the network loss reaches the weight layer
        assert any(g is not None and g.abs().sum() > 0 for g in layer_grads)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_dynamic_training_forward_leaves_no_gradient_behind():
    net = FeatureNet()
    strategy = create_weighting("dynamic", TASKS, feature_dim=8, init_steps=1)
    strategy.train()
    before = strategy.weight_layer.weight.detach().clone()
    h, losses = net(FEATURES)
    strategy(losses, features=h).backward()
    with torch.no_grad():
        net.head_a.weight.mul_(3.0)  # task 'a' now at 9x its initial loss
    h, losses = net(FEATURES)
    strategy(losses, features=h).backward()
    assert all(p.grad is None for p in strategy.weight_layer.parameters())
    assert not torch.equal(before, strategy.weight_layer.weight)


# ------------------------------------------------------------------------------ state round trip


def _drive(strategy: WeightingStrategy, step: int) -> tuple[float, dict[str, float]]:
    """One deterministic training step (an epoch every 3 steps); returns the total and weights."""
    la, lb = 1.0 + 0.7 * math.sin(step), 0.3 + 0.05 * step
    features = torch.cos(torch.arange(16.0).reshape(2, 8) * (step + 1))
    shared = nn.Parameter(torch.linspace(-1, 1, 6))
    losses = {"a": la * (shared**2).sum(), "b": lb * (shared.sin() ** 2).sum() * 50}
    total = strategy(losses, features=features, shared_parameters=[shared])
    if strategy.name == "uncertainty":
        with torch.no_grad():
            strategy.log_vars -= 0.1 * torch.autograd.grad(total, [strategy.log_vars])[0]
    if step % 3 == 2:
        strategy.on_train_epoch_end()
    return total.item(), strategy.weights


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_state_dict_round_trip_continues_identically(name):
    options = {"feature_dim": 8} if name == "dynamic" else {}
    if name == "equal":
        options = {"weights": {"a": 0.3}}
    original = create_weighting(name, TASKS, **options).train()
    for step in range(7):
        _drive(original, step)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = create_weighting(name, TASKS, **options).train()
    resumed.load_state_dict(copy.deepcopy(state))
    assert resumed.weights == original.weights
    for step in range(7, 16):
        assert _drive(resumed, step) == _drive(original, step)
    for key, value in original.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed.state_dict()[key], value, equal_nan=True)


def test_gradnorm_round_trip_needs_the_optimizer_state():
    """Without the saved Adam moments the continuation differs: the extra state matters."""
    original = create_weighting("gradnorm", TASKS).train()
    for step in range(7):
        _drive(original, step)
    state = copy.deepcopy(original.state_dict())
    assert "_extra_state" in state
    del state["_extra_state"]
    partial = create_weighting("gradnorm", TASKS).train()
    partial.load_state_dict(state, strict=False)
    assert [_drive(partial, s) for s in range(7, 10)] != [_drive(original, s) for s in range(7, 10)]


def test_gradnorm_shared_layer_is_the_last_main_path_layer_not_a_shortcut():
    from distmtl.models import MultiTaskNet
    from distmtl.tasks import Task

    net = MultiTaskNet({"a": Task.from_dict("a", {"kind": "multiclass", "labels": ["x", "y"]})},
                       backbone="test_resnet")
    chosen = net.last_shared_parameters()
    names = {id(p): n for n, p in net.backbone.named_parameters()}
    weight = next(names[id(p)] for p in chosen if p.dim() > 1)
    # test_resnet's last block ends with a 1x1 shortcut conv (layer4.0.downsample.1), registered
    # and run after the block's last main-path conv
    assert "downsample" not in weight and weight == "layer4.0.conv2.weight", weight
    assert any("downsample" in n for n in names.values())


def test_initial_weights_balance_the_first_losses_then_stay_fixed():
    strategy = create_weighting("initial", ["expression", "au"], steps=3).train()
    first = [(2.0, 0.5), (1.8, 0.6), (1.9, 0.4)]
    for e, a in first:
        total = strategy({"expression": torch.tensor(e), "au": torch.tensor(a)})
        assert strategy.weights == {"expression": 1.0, "au": 1.0} or (e, a) == first[-1]
    assert strategy.weights == pytest.approx({"expression": 1.0, "au": 1.9 / 0.5})
    assert float(total) == pytest.approx(1.9 + 0.4 * 3.8)  # the window's last batch already uses them
    strategy({"expression": torch.tensor(0.01), "au": torch.tensor(5.0)})
    assert strategy.weights == pytest.approx({"expression": 1.0, "au": 3.8})


def test_initial_weights_count_only_batches_that_hold_the_task():
    strategy = create_weighting("initial", ["expression", "au"], steps=2).train()
    strategy({"expression": torch.tensor(2.0)})
    strategy({"expression": torch.tensor(2.0)})
    assert strategy.weights == {"expression": 1.0, "au": 1.0}  # au has no batch yet
    strategy({"au": torch.tensor(0.25)})
    strategy({"expression": torch.tensor(2.0), "au": torch.tensor(0.75)})
    assert strategy.weights == pytest.approx({"expression": 1.0, "au": 4.0})


def test_initial_weights_do_not_move_in_eval_mode():
    strategy = create_weighting("initial", ["expression", "au"], steps=1).eval()
    strategy({"expression": torch.tensor(2.0), "au": torch.tensor(0.5)})
    assert strategy.weights == {"expression": 1.0, "au": 1.0}


def test_initial_weights_say_so_when_a_first_loss_is_not_positive(caplog):
    import logging

    strategy = create_weighting("initial", ["expression", "au"], steps=1).train()
    with caplog.at_level(logging.WARNING, logger="distmtl.weighting.initial"):
        strategy({"expression": torch.tensor(2.0), "au": torch.tensor(0.0)})
    assert strategy.weights == {"expression": 1.0, "au": 1.0}
    assert "au 0" in caplog.text and "every task keeps weight 1" in caplog.text
