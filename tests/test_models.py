import dataclasses
import inspect
import itertools

import pytest
import torch
from torch import nn

from aer.models import NETS, DecisionAttention, FeatureAttention, MultiLevelAttention, build_net
from aer.settings import MODELS
from conftest import compose_cfg

B, T, D, C = 6, 10, 128, 527
LENGTHS = torch.tensor([1, 3, 10, 7, 10, 2])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def padded_batch(lengths: torch.Tensor = LENGTHS, garbage: bool = False) -> torch.Tensor:
    """Random clips; frames past each length are zero, or random garbage if asked."""
    x = torch.randn(len(lengths), T, D)
    pad = torch.arange(T) >= lengths[:, None]
    x[pad] = torch.randn(int(pad.sum()), D) * 5 if garbage else 0.0
    return x


def out_shape(net: nn.Module, lengths: torch.Tensor = LENGTHS) -> torch.Size:
    return net(padded_batch(lengths), lengths).shape


# --- shapes ---------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hidden": []},
        {"hidden": [256, 128], "dropout": 0.3, "activation": "tanh", "batch_norm": True},
        {"activation": "sigmoid"},
        {"activation": "gelu", "num_classes": 10},
    ],
)
def test_fc_shapes(kwargs):
    net = build_net("fc", **kwargs)
    assert out_shape(net) == (B, kwargs.get("num_classes", C))


SKIP_GRID = list(
    itertools.product([1, 2, 3], [True, False], [True, False], [True, False], ["flatten", "mean", "max"])
)


@pytest.mark.parametrize("layers,skip,bidirectional,packed,pool", SKIP_GRID)
def test_skiplstm_shapes(layers, skip, bidirectional, packed, pool):
    net = build_net("skiplstm", layers=layers, hidden=8, skip=skip, bidirectional=bidirectional, packed=packed,
                    pool=pool)
    assert out_shape(net) == (B, C)


def test_skiplstm_head_and_dropout_shapes():
    net = build_net("skiplstm", hidden=16, fc_hidden=[64, 32], dropout=0.2, num_classes=11)
    assert out_shape(net) == (B, 11)
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [64, 32, 11]


@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
@pytest.mark.parametrize("layers", [0, 1, 3])
def test_attention_shapes(attention, layers):
    net = build_net("attention", hidden=32, layers=layers, attention=attention)
    assert out_shape(net) == (B, C)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_multiattention_shapes(levels):
    net = build_net("multiattention", hidden=32, levels=levels, num_classes=20)
    assert out_shape(net) == (B, 20)
    assert net.classify.in_features == levels * 32


@pytest.mark.parametrize("attention", ["sigmoid", "softmax"])
@pytest.mark.parametrize("layers", [1, 3])
def test_featattention_shapes(attention, layers):
    net = build_net("featattention", hidden=32, layers=layers, attention=attention, num_classes=20)
    assert out_shape(net) == (B, 20)
    assert sum(isinstance(m, nn.Linear) for m in net.embed) == layers


@pytest.mark.parametrize("pool", ["attention", "cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("layers", [1, 3])
def test_transformer_shapes(pool, positions, layers):
    net = build_net("transformer", d_model=16, heads=2, ff_dim=32, layers=layers, pool=pool, positions=positions,
                    num_classes=20)
    assert out_shape(net) == (B, 20)
    assert len(net.encoder.layers) == layers
    assert all(layer.norm_first and layer.self_attn.batch_first for layer in net.encoder.layers)


@pytest.mark.parametrize("pool", ["attention", "cls"])
def test_transformer_positions_cover_max_frames_and_the_class_token(pool):
    learned = build_net("transformer", d_model=16, heads=2, ff_dim=32, pool=pool, max_frames=7)
    assert learned.positions.shape == (1, 7 + (pool == "cls"), 16)
    assert "positions" in dict(learned.named_parameters())
    fixed = build_net("transformer", d_model=16, heads=2, ff_dim=32, pool=pool, positions="sinusoidal")
    assert fixed.positions.shape == (1, T + (pool == "cls"), 16)
    assert "positions" not in fixed.state_dict()  # rebuilt from the settings, not stored
    build_net("transformer", d_model=16, heads=2, ff_dim=32, pool=pool, positions="sinusoidal").load_state_dict(
        fixed.state_dict())
    assert build_net("transformer", d_model=16, heads=2, ff_dim=32, positions="none").positions is None
    with pytest.raises(ValueError, match="max_frames=7"):
        learned(torch.randn(2, 8, D), torch.tensor([8, 3]))


def test_transformer_builds_without_warnings(recwarn):
    net = build_net("transformer", d_model=16, heads=2, ff_dim=32).eval()
    with torch.no_grad():  # the fast path of eval mode
        net(padded_batch(), LENGTHS)
    net.train()(padded_batch(), LENGTHS)
    assert not [str(w.message) for w in recwarn.list]


def test_shorter_than_max_frames_is_padded():
    lengths = torch.tensor([2, 5])
    x = torch.randn(2, 5, D)
    for net in (build_net("fc"), build_net("skiplstm", hidden=8), build_net("skiplstm", hidden=8, packed=True),
                build_net("skiplstm", hidden=8, pool="max")):
        net.eval()
        padded = torch.cat([x, torch.zeros(2, T - 5, D)], dim=1)
        torch.testing.assert_close(net(x, lengths), net(padded, lengths))


def test_too_many_frames_rejected():
    with pytest.raises(ValueError, match="max_frames"):
        build_net("fc")(torch.randn(2, T + 1, D), torch.tensor([T + 1, 3]))


# --- architecture ---------------------------------------------------------

def test_default_featattention_has_the_papers_sizes():
    net = build_net("featattention")
    h = 1024
    embed = (128 * h + h + 2 * h) + 2 * (h * h + h + 2 * h)  # Linear + BatchNorm, three times
    pooling = 2 * (h * h + h) + 2 * h  # value and attention maps, BatchNorm
    assert sum(p.numel() for p in net.parameters()) == embed + pooling + h * C + C == 4_878_863
    assert [type(m) for m in net.embed] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 3
    assert net.embed[3].p == 0.5 and net.attention == "sigmoid"


def test_default_transformer_size():
    net = build_net("transformer")
    d, ff = 256, 512
    layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    expected = (128 * d + d) + T * d + 2 * layer + 2 * d + d + (d * C + C)  # ... final LayerNorm, pool score
    assert sum(p.numel() for p in net.parameters()) == expected == 1_225_999
    assert net.encoder.layers[0].self_attn.num_heads == 4 and net.encoder.layers[0].dropout.p == 0.2


def test_default_fc_is_the_report_model():
    net = build_net("fc")
    assert sum(p.numel() for p in net.parameters()) == 1280 * 500 + 500 + 500 * 527 + 527
    assert [type(m) for m in net.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (net.net[0].in_features, net.net[0].out_features) == (1280, 500)
    assert (net.net[2].in_features, net.net[2].out_features) == (500, 527)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_skip_connection_input_dims(bidirectional):
    hidden, layers = 16, 3
    out = hidden * (2 if bidirectional else 1)
    net = build_net("skiplstm", layers=layers, hidden=hidden, bidirectional=bidirectional, skip=True)
    assert [lstm.input_size for lstm in net.lstms] == [D + k * out for k in range(layers)]
    assert net.feature_dim == D + layers * out
    assert net.head[-1].in_features == T * (D + layers * out)

    plain = build_net("skiplstm", layers=layers, hidden=hidden, bidirectional=bidirectional, skip=False, pool="mean")
    assert [lstm.input_size for lstm in plain.lstms] == [D] + [out] * (layers - 1)
    assert plain.head[-1].in_features == out
    assert all(lstm.bidirectional == bidirectional and lstm.hidden_size == hidden for lstm in net.lstms)


def test_skip_features_start_with_the_input():
    net = build_net("skiplstm", layers=2, hidden=8, pool="mean").eval()
    x = padded_batch()
    feats = net._encode_padded(x)
    torch.testing.assert_close(feats[..., :D], x)


@pytest.mark.parametrize("pool", ["flatten", "mean", "max"])
@pytest.mark.parametrize("skip", [True, False])
def test_packed_equals_padded_for_full_clips(pool, skip):
    lengths = torch.full((4,), T)
    x = padded_batch(lengths)
    padded = build_net("skiplstm", hidden=8, skip=skip, pool=pool, packed=False).eval()
    packed = build_net("skiplstm", hidden=8, skip=skip, pool=pool, packed=True).eval()
    packed.load_state_dict(padded.state_dict())
    torch.testing.assert_close(packed(x, lengths), padded(x, lengths), rtol=1e-5, atol=1e-5)


def test_unpacked_lstm_sees_padding():
    # Documents the report's behaviour: without packing, the backward direction reads padded frames.
    net = build_net("skiplstm", hidden=8, packed=False, pool="mean").eval()
    assert not torch.allclose(net(padded_batch(), LENGTHS), net(padded_batch(garbage=True), LENGTHS))


# --- masking --------------------------------------------------------------

MASKING_NETS = {
    "attention-softmax": lambda: build_net("attention", hidden=32, attention="softmax"),
    "attention-sigmoid": lambda: build_net("attention", hidden=32, attention="sigmoid"),
    "multiattention": lambda: build_net("multiattention", hidden=32, levels=3),
    "featattention-sigmoid": lambda: build_net("featattention", hidden=32, attention="sigmoid"),
    "featattention-softmax": lambda: build_net("featattention", hidden=32, attention="softmax"),
    **{
        f"transformer-{pool}-{positions}": (lambda pool=pool, positions=positions: build_net("transformer",
            d_model=16, heads=2, ff_dim=32, layers=2, pool=pool, positions=positions))
        for pool in ("attention", "cls", "mean")
        for positions in ("learned", "sinusoidal", "none")
    },
    **{
        f"skiplstm-packed-{pool}-skip{skip}": (lambda pool=pool, skip=skip: build_net("skiplstm",
            hidden=8, layers=2, skip=skip, packed=True, pool=pool))
        for pool in ("flatten", "mean", "max")
        for skip in (True, False)
    },
}


@pytest.mark.parametrize("name", sorted(MASKING_NETS))
def test_padded_frames_do_not_matter(name):
    net = MASKING_NETS[name]().eval()
    torch.manual_seed(1)
    clean = padded_batch()
    dirty = clean.clone()
    pad = torch.arange(T) >= LENGTHS[:, None]
    dirty[pad] = torch.randn(int(pad.sum()), D) * 5
    torch.testing.assert_close(net(dirty, LENGTHS), net(clean, LENGTHS), rtol=1e-5, atol=1e-5)
    # The one-frame clip gives the same output alone, with no padding at all.
    torch.testing.assert_close(net(dirty[:1, :1], LENGTHS[:1]), net(dirty[:1], LENGTHS[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad", [True, False])  # without autograd, torch's transformer layers take a fused path
@pytest.mark.parametrize("name", sorted(MASKING_NETS))
def test_a_clip_alone_gives_its_output_in_a_longer_batch(name, grad):
    # each clip cut to its own length and scored alone: the same logits as in the batch padded to T frames
    net = MASKING_NETS[name]().eval()
    x = padded_batch(garbage=True)
    with torch.set_grad_enabled(grad):
        batched = net(x, LENGTHS)
        for i, n in enumerate(LENGTHS.tolist()):
            torch.testing.assert_close(net(x[i:i + 1, :n], LENGTHS[i:i + 1]), batched[i:i + 1], rtol=1e-5,
                                       atol=1e-5)
        if not grad:  # the fused path gives what the training path gives
            with torch.enable_grad():
                torch.testing.assert_close(net(x, LENGTHS), batched, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DecisionAttention, MultiLevelAttention, FeatureAttention])
def test_batchnorm_statistics_ignore_padding(cls):
    # In training mode BatchNorm normalises with batch statistics; they must come from real frames only.
    name = {DecisionAttention: "attention", MultiLevelAttention: "multiattention", FeatureAttention: "featattention"}
    net = build_net(name[cls], hidden=32, dropout=0.0).train()
    clean = padded_batch()
    dirty = padded_batch(garbage=True)
    dirty[torch.arange(T) < LENGTHS[:, None]] = clean[torch.arange(T) < LENGTHS[:, None]]
    torch.testing.assert_close(net(dirty, LENGTHS), net(clean, LENGTHS), rtol=1e-5, atol=1e-5)


def test_attention_logits_are_logit_of_pooled_probability():
    net = build_net("attention", hidden=16, layers=2, num_classes=7, attention="sigmoid").eval()
    x = padded_batch()
    mask = torch.arange(T) < LENGTHS[:, None]
    logits = net(x, LENGTHS)
    h = net.embed(x.reshape(-1, D)).reshape(B, T, -1)
    p = torch.sigmoid(net.classify(h))
    a = torch.sigmoid(net.attend(h)) * mask[..., None]
    expected = (a / a.sum(1, keepdim=True) * p).sum(1)
    torch.testing.assert_close(torch.sigmoid(logits), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["sigmoid", "softmax"])
def test_featattention_pools_each_feature_with_its_own_weights(attention):
    net = build_net("featattention", hidden=16, layers=2, num_classes=7, attention=attention).eval()
    x = padded_batch()
    mask = torch.arange(T) < LENGTHS[:, None]
    h = net.embed(x.reshape(-1, D)).reshape(B, T, -1)
    score = net.attend(h)
    a = (torch.sigmoid(score) if attention == "sigmoid" else score.exp()) * mask[..., None]
    pooled = (a / a.sum(1, keepdim=True) * net.value(h)).sum(1)
    torch.testing.assert_close(net(x, LENGTHS), net.classify(net.head(pooled)), rtol=1e-5, atol=1e-5)


def test_attention_logits_finite_when_saturated():
    net = build_net("attention", hidden=16, layers=1, num_classes=3, batch_norm=False, dropout=0.0)
    with torch.no_grad():
        net.classify.bias.fill_(60.0)
    x = padded_batch()
    logits = net(x, LENGTHS)
    logits.sum().backward()
    assert torch.isfinite(logits).all() and (logits > 30).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# --- gradients ------------------------------------------------------------

GRAD_CASES = [
    ("fc", {}),
    ("fc", {"hidden": [64, 32], "batch_norm": True, "dropout": 0.1, "activation": "gelu"}),
    ("skiplstm", {"hidden": 8}),
    ("skiplstm", {"hidden": 8, "packed": True, "pool": "max", "fc_hidden": [16], "dropout": 0.1}),
    ("skiplstm", {"hidden": 8, "packed": True, "pool": "mean", "skip": False, "bidirectional": False}),
    ("attention", {"hidden": 32}),
    ("attention", {"hidden": 32, "attention": "sigmoid"}),
    ("multiattention", {"hidden": 32}),
    ("featattention", {"hidden": 32}),
    ("featattention", {"hidden": 32, "attention": "softmax", "batch_norm": False}),
    ("transformer", {"d_model": 16, "heads": 2, "ff_dim": 32}),
    ("transformer", {"d_model": 16, "heads": 2, "ff_dim": 32, "pool": "cls", "layers": 3}),
    ("transformer", {"d_model": 16, "heads": 4, "ff_dim": 32, "pool": "mean", "positions": "sinusoidal"}),
]


@pytest.mark.parametrize("name,kwargs", GRAD_CASES)
def test_gradients_flow(name, kwargs):
    net = build_net(name, **kwargs).train()
    x = padded_batch().requires_grad_(True)
    target = (torch.rand(B, C) < 0.05).float()
    loss = nn.functional.binary_cross_entropy_with_logits(net(x, LENGTHS), target)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert torch.isfinite(x.grad).all()


# --- registry -------------------------------------------------------------

TINY = {"fc": {"hidden": [8]}, "transformer": {"d_model": 8, "heads": 2, "ff_dim": 16}}


def test_registry_keys_are_the_model_config_names():
    """What users type (`model=NAME`) is the name build_net builds, defined in aer/models/NAME.py."""
    for name, cls in NETS.items():
        assert cls.__module__ == f"aer.models.{name}", name
        assert type(build_net(name, **TINY.get(name, {"hidden": 8}))) is cls
        assert compose_cfg("train", [f"model={name}"]).model.name == name


def test_build_net_unknown_name():
    names = "attention, fc, featattention, multiattention, skiplstm, transformer"
    with pytest.raises(ValueError, match=f"'lstm'.*expected one of {names}"):
        build_net("lstm")


def test_build_net_unknown_options():
    with pytest.raises(ValueError, match="model.hiden: not a setting here .*hidden, dropout"):
        build_net("fc", hiden=[3], nlayers=2)
    with pytest.raises(ValueError, match="pol"):
        build_net("skiplstm", pol="mean")


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("fc", {"activation": "swish"}, "activation.*relu, sigmoid, tanh, gelu"),
        ("skiplstm", {"pool": "avg"}, "pool.*flatten, mean, max"),
        ("skiplstm", {"layers": 0}, "layers"),
        ("attention", {"attention": "tanh"}, "attention.*softmax, sigmoid"),
        ("multiattention", {"levels": 0}, "levels"),
        ("featattention", {"attention": "tanh"}, "attention.*sigmoid, softmax"),
        ("featattention", {"layers": 0}, "layers"),
        ("transformer", {"pool": "max"}, "pool.*attention, cls, mean"),
        ("transformer", {"positions": "rotary"}, "positions.*learned, sinusoidal, none"),
        ("transformer", {"heads": 3}, "model.heads=3: expected a divisor of model.d_model=256"),
    ],
)
def test_bad_option_values(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_net(name, **kwargs)


def test_networks_take_exactly_their_declared_settings():
    # a network's options are declared once (aer.settings.MODELS): its constructor takes those and the
    # three shapes, all by keyword and without defaults of its own
    assert set(NETS) == set(MODELS)
    for name, cls in NETS.items():
        params = inspect.signature(cls).parameters
        assert list(params)[:3] == ["num_classes", "in_dim", "max_frames"]
        assert set(list(params)[3:]) == {f.name for f in dataclasses.fields(MODELS[name])}
        assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params.values())


def test_other_input_dim():
    lengths = torch.tensor([4, 10])
    x = torch.randn(2, T, 64)
    for name in NETS:
        net = build_net(name, in_dim=64, num_classes=5).eval()
        assert net(x, lengths).shape == (2, 5)
