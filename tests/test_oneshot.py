"""One-shot scores of architectures on the shared supernet: batch-norm recalibration, the deciding head, and a
supernet that comes back unchanged."""

from __future__ import annotations

import torch
from torch import nn

from fasterseg_core.search.oneshot import branch_head, oneshot_scores, recalibrate_batch_norm
from fasterseg_core.search.random_arch import random_arch_state

LAYERS = 4  # a small grid: every scale is reached, and a forward takes milliseconds


def _supernet() -> nn.Module:
    from fasterseg_core.models.supernet import Supernet

    torch.manual_seed(0)
    return Supernet(3, num_layers=LAYERS)


def _running(net: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for n, t in net.state_dict().items() if n.endswith(("running_mean", "running_var"))]


def test_the_deciding_head_follows_the_second_branch():
    assert branch_head((2, 0)) == "8s_32s" and branch_head((2, 1)) == "16s_32s"


def test_recalibration_is_the_plain_mean_over_the_crops_whatever_their_order():
    net = _supernet()
    crops = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    before = _running(net)
    assert recalibrate_batch_norm(net, crops, "cpu") == 3
    forward = _running(net)
    recalibrate_batch_norm(net, crops[::-1], "cpu")
    backward = _running(net)
    # an exponential moving average would weigh the last batch most; the cumulative mean does not care
    assert any(not torch.equal(a, b) for a, b in zip(before, forward))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(forward, backward))
    assert not net.training
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_scores_differ_by_architecture_and_leave_the_supernet_as_it_was():
    net = _supernet()
    gen = torch.Generator().manual_seed(1)
    archs = {f"random-{i}": (random_arch_state(gen, LAYERS), lasts) for i, lasts in enumerate([(2, 0), (2, 1)])}
    crops = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]
    val = [(torch.randn(2, 3, 64, 64, generator=gen), torch.randint(3, (2, 64, 64), generator=gen))
           for _ in range(2)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    scores = oneshot_scores(net, archs, crops, val, "cpu")
    assert [s.head for s in scores.values()] == ["8s_32s", "16s_32s"]
    for s in scores.values():
        assert 0.0 <= s.miou <= 1.0 and s.miou == s.heads[s.head] and len(s.heads) == 5
    assert scores["random-0"].heads != scores["random-1"].heads  # another path, other predictions
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net.training  # as it came in
