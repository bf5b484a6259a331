import torch

from teddy.losses import BNStatisticsRecorder, bn_statistics_loss, gradient_distance, statistics_distance
from teddy.models import bn_layers, build_model


def _model_with_stats_of(x):
    """A ConvNet whose BN running statistics are exactly those of batch x (momentum None =
    cumulative average over one batch)."""
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1, 28, depth=2, width=8)
    for bn in bn_layers(model):
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_statistics_distance_is_zero_for_equal_statistics():
    feats = torch.randn(16, 4, 5, 5)
    mean = feats.mean(dim=(0, 2, 3))
    var = feats.var(dim=(0, 2, 3), unbiased=False)
    assert statistics_distance(feats, mean, var).item() < 1e-6
    assert statistics_distance(feats, mean + 1, var).item() > 1.0


def test_bn_loss_zero_when_batch_statistics_equal_stored_ones():
    x = torch.randn(32, 1, 28, 28)
    model = _model_with_stats_of(x)
    with BNStatisticsRecorder(model) as rec:
        model(x)
    # BN stores the unbiased variance, the loss uses the biased one: they differ by var/(N*H*W)
    assert rec.loss(10.0).item() < 1e-2
    with BNStatisticsRecorder(model) as other:
        model(torch.randn(32, 1, 28, 28) * 3 + 2)
    assert other.loss(10.0).item() > 1.0


def test_bn_loss_decreases_under_optimisation():
    real = torch.randn(64, 1, 28, 28) * 0.5 + 0.3
    model = _model_with_stats_of(real)
    for p in model.parameters():
        p.requires_grad_(False)
    syn = (torch.randn(20, 1, 28, 28) * 2 - 1).requires_grad_(True)
    labels = torch.arange(20) % 10
    opt = torch.optim.Adam([syn], lr=0.05)
    losses = []
    for _ in range(60):
        loss, parts = bn_statistics_loss(model, syn, labels, alpha=1.0, ce_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_gradient_distance_zero_when_gradients_coincide():
    g = [torch.randn(8, 3, 3, 3), torch.randn(8), torch.randn(10, 32)]
    assert gradient_distance(g, [t.clone() for t in g]).item() < 1e-5
    assert gradient_distance(g, [-t for t in g]).item() > 10
