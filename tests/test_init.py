import math

import pytest
import torch
from torch import nn

from aer.init import SCHEMES as INITS
from aer.init import apply_init
from aer.models import build_net

FAN_IN, FAN_OUT = 1000, 600  # Linear(1000, 600): weight is (600, 1000)
LSTM_IN, LSTM_HIDDEN = 64, 128  # gate blocks of 8k-33k weights: enough for the std checks


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def initialised_linear(name: str, **kwargs) -> nn.Linear:
    layer = nn.Linear(FAN_IN, FAN_OUT)
    apply_init(layer, name, **kwargs)
    return layer


def lstm_gates(lstm: nn.LSTM):
    """Yield (param name, gate block) for every gate of every LSTM weight matrix."""
    for pname, p in lstm.named_parameters():
        if pname.startswith("weight"):
            for gate in p.detach().chunk(4, dim=0):
                yield pname, gate


def initialised_lstm(name: str, **kwargs) -> nn.LSTM:
    lstm = nn.LSTM(LSTM_IN, LSTM_HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
    apply_init(lstm, name, **kwargs)
    return lstm


def assert_std(w: torch.Tensor, expected: float, rel: float = 0.03) -> None:
    assert w.std().item() == pytest.approx(expected, rel=rel)
    assert abs(w.mean().item()) < 0.05 * expected


def assert_orthonormal(w: torch.Tensor, gain: float = 1.0) -> None:
    # Rows are orthonormal when there are fewer rows than columns, columns otherwise.
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-4, rtol=0)


# --- Linear ---------------------------------------------------------------

@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_xavier_linear(gain):
    w = initialised_linear("xavier", gain=gain).weight.detach()
    assert_std(w, gain * math.sqrt(2 / (FAN_IN + FAN_OUT)))
    assert w.abs().max() <= gain * math.sqrt(6 / (FAN_IN + FAN_OUT))


def test_kaiming_linear():
    w = initialised_linear("kaiming").weight.detach()
    assert_std(w, math.sqrt(2 / FAN_IN))
    assert w.abs().max() <= math.sqrt(6 / FAN_IN)


@pytest.mark.parametrize("shape", [(FAN_IN, FAN_OUT), (FAN_OUT, FAN_IN)])
def test_orthogonal_linear(shape):
    layer = nn.Linear(*shape)
    apply_init(layer, "orthogonal")
    assert_orthonormal(layer.weight.detach())


@pytest.mark.parametrize("kwargs,std", [({}, 0.01), ({"std": 0.2}, 0.2)])
def test_normal_linear(kwargs, std):
    assert_std(initialised_linear("normal", **kwargs).weight.detach(), std)


@pytest.mark.parametrize("kwargs,a", [({}, 0.05), ({"a": 0.3}, 0.3)])
def test_uniform_linear(kwargs, a):
    w = initialised_linear("uniform", **kwargs).weight.detach()
    assert w.abs().max() <= a
    assert w.abs().max() > 0.99 * a
    assert_std(w, a / math.sqrt(3))


@pytest.mark.parametrize("name", sorted(set(INITS) - {"default"}))
def test_biases_zeroed(name):
    layer = initialised_linear(name)
    assert torch.count_nonzero(layer.bias) == 0
    lstm = initialised_lstm(name)
    biases = [p for n, p in lstm.named_parameters() if n.startswith("bias")]
    assert len(biases) == 8
    assert all(torch.count_nonzero(b) == 0 for b in biases)


# --- LSTM: per gate ---------------------------------------------------------

def test_xavier_lstm_per_gate():
    lstm = initialised_lstm("xavier")
    for pname, gate in lstm_gates(lstm):
        fan_in = gate.shape[1]
        # A whole-matrix init would give fan_out = 4 * hidden and a visibly smaller std.
        bound = math.sqrt(6 / (fan_in + LSTM_HIDDEN))
        assert_std(gate, math.sqrt(2 / (fan_in + LSTM_HIDDEN)), rel=0.05)
        assert gate.abs().max() <= bound, pname


def test_kaiming_lstm_per_gate():
    lstm = initialised_lstm("kaiming")
    for pname, gate in lstm_gates(lstm):
        assert_std(gate, math.sqrt(2 / gate.shape[1]), rel=0.05)
        assert gate.abs().max() <= math.sqrt(6 / gate.shape[1]), pname


def test_orthogonal_lstm_per_gate():
    lstm = initialised_lstm("orthogonal")
    shapes = set()
    for _, gate in lstm_gates(lstm):
        shapes.add(tuple(gate.shape))
        assert_orthonormal(gate)
    # Covers square (hh), tall (ih layer 0: 128x64) and wide (ih layer 1: 128x256) gate blocks.
    assert shapes == {(128, 128), (128, 64), (128, 256)}


@pytest.mark.parametrize("name,kwargs,std", [("normal", {}, 0.01), ("uniform", {"a": 0.1}, 0.1 / math.sqrt(3))])
def test_simple_schemes_lstm(name, kwargs, std):
    lstm = initialised_lstm(name, **kwargs)
    for _, gate in lstm_gates(lstm):
        assert_std(gate, std, rel=0.05)


# --- whole networks, BatchNorm, default -------------------------------------

@pytest.mark.parametrize("name", sorted(set(INITS) - {"default"}))
def test_every_weight_of_a_network(name):
    net = build_net("attention", hidden=64)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            nn.init.uniform_(m.weight)
            nn.init.uniform_(m.bias)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    apply_init(net, name)
    for n, p in net.named_parameters():
        if n.endswith("bias"):
            assert torch.count_nonzero(p) == 0, n
        elif ".embed." in n and p.dim() == 1:  # BatchNorm weight
            assert torch.all(p == 1), n
        else:
            assert not torch.equal(p, before[n]), n


def test_lstm_network_weights_all_touched():
    net = build_net("skiplstm", hidden=32, layers=3)
    apply_init(net, "normal", std=0.5)
    for n, p in net.named_parameters():
        if "weight" in n:
            assert p.std().item() == pytest.approx(0.5, rel=0.1), n


def test_default_leaves_weights_untouched():
    torch.manual_seed(123)
    fresh = build_net("attention", hidden=32)
    torch.manual_seed(123)
    net = build_net("attention", hidden=32)
    with torch.no_grad():
        net.embed[1].weight.fill_(3.0)  # BatchNorm too must be left alone
        fresh.embed[1].weight.fill_(3.0)
    apply_init(net, "default")
    for (n, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    lstm_a, lstm_b = nn.LSTM(8, 4), nn.LSTM(8, 4)
    lstm_b.load_state_dict(lstm_a.state_dict())
    apply_init(lstm_a, "default")
    assert all(torch.equal(a, b) for a, b in zip(lstm_a.parameters(), lstm_b.parameters()))


def test_apply_init_returns_module():
    layer = nn.Linear(3, 2)
    assert apply_init(layer, "xavier") is layer


# --- errors ------------------------------------------------------------------

def test_unknown_name():
    with pytest.raises(ValueError, match="'he'.*default, kaiming, normal, orthogonal, uniform, xavier"):
        apply_init(nn.Linear(3, 2), "he")


@pytest.mark.parametrize("name", sorted(INITS))
def test_unknown_option_rejected_before_any_change(name):
    layer = nn.Linear(30, 20)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="init.sdt: not a setting here"):
        apply_init(layer, name, sdt=0.1)
    assert torch.equal(layer.weight, before)


# --- transformer: attention projections one at a time, LayerNorm ---------------

def test_xavier_attention_per_projection():
    mha = nn.MultiheadAttention(256, 4, batch_first=True)
    apply_init(mha, "xavier")
    for block in mha.in_proj_weight.detach().chunk(3, dim=0):
        # over the stacked (768, 256) matrix Xavier would give sqrt(2 / 1024), visibly smaller
        assert_std(block, math.sqrt(2 / (256 + 256)))
    assert torch.count_nonzero(mha.in_proj_bias) == 0 and torch.count_nonzero(mha.out_proj.bias) == 0


def test_attention_with_separate_projections():
    mha = nn.MultiheadAttention(64, 4, kdim=32, vdim=48)
    apply_init(mha, "kaiming")
    for w, fan_in in ((mha.q_proj_weight, 64), (mha.k_proj_weight, 32), (mha.v_proj_weight, 48)):
        assert w.abs().max() <= math.sqrt(6 / fan_in)


@pytest.mark.parametrize("pool", ["attention", "cls"])
@pytest.mark.parametrize("name", sorted(set(INITS) - {"default"}))
def test_every_weight_of_a_transformer(name, pool):
    net = build_net("transformer", d_model=32, heads=4, ff_dim=64, pool=pool)
    for m in net.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight)
            nn.init.uniform_(m.bias)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    apply_init(net, name)
    kept = {"positions", "cls_token"}  # their own truncated-normal initialisation
    for n, p in net.named_parameters():
        if n in kept:
            assert torch.equal(p, before[n]), n
        elif n.endswith("bias"):
            assert torch.count_nonzero(p) == 0, n
        elif "norm" in n:  # LayerNorm weight
            assert torch.all(p == 1), n
        else:
            assert not torch.equal(p, before[n]), n
    assert kept & set(before) == ({"positions", "cls_token"} if pool == "cls" else {"positions"})
