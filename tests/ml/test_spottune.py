from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from spottune.contract import POLICY_KINDS, PolicyKind
from spottune.ml.loop import nesterov_sgd, train_step
from spottune.ml.network import UNet
from spottune.ml.policy import GlobalPolicy, sample_gates
from spottune.ml.spottune import SpotTUNet, _GateMix, _RoutedConvolution


def tiny_base(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    base = UNet(width=4, depth=2, blocks_per_stage=1)
    # A little training-like state in the BatchNorms, so "unchanged" is a meaningful check.
    base.train()
    with torch.no_grad():
        base(torch.rand(4, 1, 32, 32))
    return base.eval()


# (policy, input shape, expected logits shape)
SHAPES = [
    ("instance", (3, 1, 32, 32), (3, 1, 32, 32)),
    ("instance", (2, 1, 32, 64), (2, 1, 32, 64)),  # agent input pooled to 32 x 32
    ("instance", (2, 1, 96, 96), (2, 1, 96, 96)),  # agent input pooled down to 32 x 32
    ("global", (3, 1, 32, 32), (3, 1, 32, 32)),
    ("global", (1, 1, 16, 48), (1, 1, 16, 48)),
]


@pytest.mark.parametrize(("policy", "in_shape", "out_shape"), SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_hard_gates(policy: PolicyKind, in_shape: tuple[int, ...],
                               out_shape: tuple[int, ...], training: bool) -> None:
    model = SpotTUNet(tiny_base(), policy).train(training)  # type: ignore[arg-type]
    logits, gates = model.forward_with_gates(torch.rand(in_shape))
    assert logits.shape == out_shape
    assert gates.shape == (in_shape[0], model.n_gates) == (in_shape[0], 14)
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    assert model(torch.rand(in_shape)).shape == out_shape


@pytest.mark.parametrize("policy", POLICY_KINDS)
def test_gradients_reach_policy_and_trainable_twins_only(policy: PolicyKind) -> None:
    model = SpotTUNet(tiny_base(), policy).train()  # type: ignore[arg-type]
    logits, gates = model.forward_with_gates(torch.rand(4, 1, 32, 32))
    (logits.mean() + 0.1 * gates.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.parameters()
               if p.ndim > 1)
    assert all(not p.requires_grad and p.grad is None for p in model.frozen.parameters())
    assert any(p.grad is not None for p in model.trainable.parameters())


def test_gate_names_and_state_dict_layout() -> None:
    model = SpotTUNet(tiny_base(), "global")
    assert model.gate_names[0] == "init.conv" and model.gate_names[-1] == "skip.down1"
    assert model.gate_stages[0] == "init" and model.gate_stages[-1] == "skip"
    keys = set(model.state_dict())
    assert "frozen.init.conv.weight" in keys and "trainable.out.norm.running_mean" in keys
    assert "policy.logits" in keys


@pytest.mark.parametrize("policy", POLICY_KINDS)
def test_frozen_twins_are_bit_identical_after_training(policy: PolicyKind) -> None:
    torch.manual_seed(0)
    base = tiny_base()
    model = SpotTUNet(base, policy).train()  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    optimizers = [nesterov_sgd(list(model.trainable.parameters()), 0.1),
                  nesterov_sgd(list(model.policy.parameters()), 0.1, 1e-3)]
    for _ in range(3):
        x = torch.rand(4, 1, 32, 32)
        train_step(model, x, (x > 0.5).float(), optimizers=optimizers, lambda_reg=0.01)
    assert not model.frozen.training and model.trainable.training
    for key, value in model.frozen.state_dict().items():
        assert torch.equal(value, before[key]), key
    # ...while the trainable twins did learn (weights and BatchNorm statistics moved).
    trained = model.trainable.state_dict()
    assert not all(torch.equal(trained[k], before[k]) for k in before)
    assert not torch.equal(trained["init.block0.unit1.norm.running_mean"],
                           before["init.block0.unit1.norm.running_mean"])
    # The base the twins were copied from is untouched.
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("policy", POLICY_KINDS)
def test_untrained_model_in_eval_mode_equals_the_source(policy: PolicyKind) -> None:
    base = tiny_base()
    model = SpotTUNet(base, policy).eval()  # type: ignore[arg-type]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))
        torch.testing.assert_close(model(x), model(x))  # eval: argmax, no noise


def test_export_equals_the_gated_model() -> None:
    torch.manual_seed(1)
    model = SpotTUNet(tiny_base(), "global").train()
    optimizer = nesterov_sgd(list(model.trainable.parameters()), 0.1)
    for _ in range(2):
        x = torch.rand(4, 1, 32, 32)
        train_step(model, x, (x < 0.5).float(), optimizers=[optimizer])
    assert isinstance(model.policy, GlobalPolicy)
    with torch.no_grad():
        model.policy.logits.copy_(torch.randn(model.n_gates, 2))
    model.eval()
    decisions = model.global_decisions()
    assert 0 < int(decisions.sum()) < model.n_gates  # a real mixture of twins
    plain = model.export()
    assert type(plain) is UNet and not plain.training
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-6)
        _, gates = model.forward_with_gates(x)
    assert torch.equal(gates, decisions.float().expand(3, -1))


def test_export_needs_the_global_policy() -> None:
    with pytest.raises(ValueError, match="global"):
        SpotTUNet(tiny_base(), "instance").export()


@pytest.mark.parametrize("gate", [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0], [0.0]])
def test_gate_mix_has_the_gradients_of_the_plain_expression(gate: list[float]) -> None:
    torch.manual_seed(0)
    f = torch.randn(3, 2, 4, 4, requires_grad=True)
    t = torch.randn(3, 2, 4, 4, requires_grad=True)
    g = torch.tensor(gate, requires_grad=True)
    weight = torch.randn(3, 2, 4, 4)
    hard = g.detach().bool()
    mixed = _GateMix.apply(f, t, g, bool(hard.all()), bool((~hard).all()))
    (mixed * weight).sum().backward()
    got = [x.grad.clone() if x.grad is not None else torch.zeros_like(x) for x in (f, t, g)]
    for x in (f, t, g):
        x.grad = None
    w = g.view(-1, 1, 1, 1)
    reference = w * t + (1 - w) * f
    torch.testing.assert_close(mixed, reference)
    (reference * weight).sum().backward()
    for mine, expected in zip(got, (f.grad, t.grad, g.grad), strict=True):
        torch.testing.assert_close(mine, expected)


def _plain_forward(model: SpotTUNet, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The gated U-Net as the bare expression g * trainable(h) + (1 - g) * frozen(h), both twins
    on every slice: what SpotTUNet computed before it split slices between the twins."""

    def run(name: str, h: torch.Tensor) -> torch.Tensor:
        g = gates[:, model.gate_names.index(name)].view(-1, 1, 1, 1)
        trainable = model.trainable.get_submodule(name)(h)
        return g * trainable + (1 - g) * model.frozen.get_submodule(name)(h)

    return model.trainable.forward_units(x, run)


def _perturbed(model: SpotTUNet, seed: int) -> SpotTUNet:
    """The trainable twins moved away from the frozen ones, so that the two outputs differ."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


Forward = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def _gradients(forward: Forward, y: torch.Tensor, params: list[torch.Tensor],
               seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of a BCE loss plus a small gate term w.r.t. `params` (zeros where unused), and
    the gates drawn; `seed` fixes the Gumbel draws, so two forwards compared draw alike."""
    torch.manual_seed(seed)
    logits, gates = forward()
    loss = F.binary_cross_entropy_with_logits(logits, y) + 0.01 * gates.mean()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    pairs = zip(grads, params, strict=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in pairs], gates.detach()


@pytest.mark.parametrize("frozen_norm", ["source", "target"])
def test_instance_training_gradients_equal_the_plain_expression(frozen_norm: str) -> None:
    """Each slice back-propagates through the frozen twin only where it chose it, yet every
    gradient (policy, trainable twins, input) is that of the plain expression over the batch."""
    gated = SpotTUNet(tiny_base(), "instance", frozen_norm=frozen_norm)  # type: ignore[arg-type]
    model = _perturbed(gated, 3)
    model.train()
    x = torch.rand(8, 1, 32, 32, requires_grad=True)
    y = (torch.rand(8, 1, 32, 32) > 0.5).float()
    params = [*model.trainable.parameters(), *model.policy.parameters(), x]
    got, gates = _gradients(lambda: model.forward_with_gates(x), y, params, seed=7)

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        gates = sample_gates(model.gate_logits(x), model.temperature, True)
        return _plain_forward(model, x, gates), gates

    expected, _ = _gradients(plain, y, params, seed=7)
    mixed = (gates.sum(0) > 0) & (gates.sum(0) < 8)
    assert int(mixed.sum()) >= model.n_gates // 2  # most gates split the batch between twins
    assert any(g.abs().sum() > 0 for g in got[-1:])  # the input's gradient is not trivially 0
    for mine, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


def test_instance_inference_runs_each_slice_through_its_twin_only() -> None:
    """In eval mode a slice runs only the twin its agent chose; the result is the plain
    expression's, and each twin sees only the slices that chose it."""
    model = _perturbed(SpotTUNet(tiny_base(), "instance"), 4).eval()
    assert isinstance(model.policy.head, torch.nn.Linear)
    with torch.no_grad():
        model.policy.head.weight.mul_(200)
        model.policy.head.bias.zero_()
        x = torch.rand(6, 1, 32, 32) * torch.arange(1, 7).view(6, 1, 1, 1) - 2
        logits, gates = model.forward_with_gates(x)
        split = ((gates.sum(0) > 0) & (gates.sum(0) < 6)).nonzero().flatten().tolist()
        assert split, "no gate split the batch; the check below would be empty"
        torch.testing.assert_close(logits, _plain_forward(model, x, gates), rtol=1e-4, atol=1e-5)
        name = model.gate_names[split[0]]
        seen: dict[str, list[int]] = {"frozen": [], "trainable": []}
        hooks = [
            getattr(model, twin).get_submodule(name).register_forward_hook(
                lambda _m, inputs, _o, twin=twin: seen[twin].append(inputs[0].shape[0]))
            for twin in seen
        ]
        model(x)
        for hook in hooks:
            hook.remove()
    trainable_rows = int(gates[:, split[0]].sum())
    assert seen == {"frozen": [6 - trainable_rows], "trainable": [trainable_rows]}


@pytest.mark.parametrize("gate_draws", ["batch", "slice"])
def test_global_policy_draws_per_batch_or_per_slice(gate_draws: str) -> None:
    """A global policy draws one configuration for the whole batch, or (gate_draws "slice") one per
    slice from the same logits; either way the policy's gradient is that of the plain expression
    over the gates drawn, and in eval mode every slice gets the argmax configuration."""
    model = _perturbed(SpotTUNet(tiny_base(), "global", temperature=1.0,
                                 gate_draws=gate_draws), 5)  # type: ignore[arg-type]
    model.train()
    x = torch.rand(8, 1, 32, 32)
    y = (torch.rand(8, 1, 32, 32) > 0.5).float()
    params = [*model.trainable.parameters(), *model.policy.parameters()]
    got, gates = _gradients(lambda: model.forward_with_gates(x), y, params, seed=11)

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.gate_logits(x)
        if gate_draws == "slice":
            logits = logits.expand(x.shape[0], -1, -1)
        drawn = sample_gates(logits, model.temperature, True).expand(x.shape[0], -1)
        return _plain_forward(model, x, drawn), drawn

    expected, _ = _gradients(plain, y, params, seed=11)
    distinct = len({tuple(row) for row in gates.tolist()})
    # 8 draws of 14 fair coins: all equal has probability ~2**-98
    assert distinct == (1 if gate_draws == "batch" else 8)
    assert got[-1].abs().sum() > 0  # the policy's logits get a gradient
    for mine, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)
    model.eval()
    with torch.no_grad():
        _, eval_gates = model.forward_with_gates(x)
    assert (eval_gates == model.global_decisions().float()).all()


def test_a_neutral_instance_policy_starts_undecided_and_learns_to_lean() -> None:
    """With policy_start "neutral" every slice starts at p = 0.5 for every gate (a random head
    already leans, differently per slice); a few policy steps make it lean."""
    from spottune.ml.policy import trainable_probability

    x = torch.rand(6, 1, 32, 32) * torch.arange(1, 7).view(6, 1, 1, 1)
    leaning = SpotTUNet(tiny_base(), "instance").train()
    assert (trainable_probability(leaning.gate_logits(x)) - 0.5).abs().max() > 0.01
    model = SpotTUNet(tiny_base(), "instance", policy_start="neutral").train()
    torch.testing.assert_close(trainable_probability(model.gate_logits(x)),
                               torch.full((6, model.n_gates), 0.5))
    optimizer = torch.optim.SGD(model.policy.parameters(), lr=0.5)
    torch.manual_seed(0)
    for _ in range(5):
        optimizer.zero_grad()
        _, gates = model.forward_with_gates(x)
        gates.mean().backward()  # reward choosing the frozen twin
        optimizer.step()
    after = trainable_probability(model.gate_logits(x))
    assert after.mean() < 0.45


@pytest.mark.parametrize("frozen_norm", ["source", "target"])
def test_split_batches_back_propagate_each_slice_through_its_twin_only(
    frozen_norm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a gate splits the batch, each twin's routed convolutions back-propagate only the
    slices that chose that twin (the gradients stay those of the plain expression: see above)."""
    model = _perturbed(SpotTUNet(tiny_base(), "instance", frozen_norm=frozen_norm),  # type: ignore[arg-type]
                       3).train()
    seen: list[int] = []
    backward = _RoutedConvolution.backward

    def spy(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:  # type: ignore[type-arg]
        seen.append(int(ctx.saved_tensors[2].numel()))  # type: ignore[attr-defined]
        return backward(ctx, grad)  # type: ignore[arg-type]

    monkeypatch.setattr(_RoutedConvolution, "backward", staticmethod(spy))
    torch.manual_seed(7)
    x = torch.rand(8, 1, 32, 32)
    logits, gates = model.forward_with_gates(x)
    F.binary_cross_entropy_with_logits(logits, (x > 0.5).float()).backward()
    per_gate = gates.detach().sum(0).long().tolist()
    split = {n for n in per_gate if 0 < n < 8} | {8 - n for n in per_gate if 0 < n < 8}
    assert seen, "no convolution back-propagated a part of the batch"
    assert set(seen) <= split  # every routed backward ran on one twin's share of the slices
    assert max(seen) < 8
