"""ng.onnx.export: every exported model runs in onnxruntime with nablagrad's outputs.

Skips cleanly without the optional `onnx` / `onnxruntime` packages (pip install nablagrad[onnx]).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.datasets  # noqa: F401  (ng.datasets.load_digits)
import nablagrad.functional as F
from nablagrad import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _session(model_proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _flat(obj, acc):
    if obj is None:
        return acc
    if isinstance(obj, ng.Tensor):
        acc.append(np.asarray(obj))
    else:
        for o in obj:
            _flat(o, acc)
    return acc


def check(model, *inputs, rtol=1e-5, atol=1e-5, **kwargs):
    """Exports ``model`` on ``inputs``, runs the file in onnxruntime, compares every output."""
    if isinstance(model, nn.Module):
        model.eval()
    inputs = [x if isinstance(x, ng.Tensor) else ng.tensor(x) for x in inputs]
    with ng.no_grad():
        expected = _flat(model(*inputs), [])
    mp = ng.onnx.export(model, tuple(inputs) if len(inputs) > 1 else inputs[0], **kwargs)
    onnx.checker.check_model(mp, full_check=True)
    sess = _session(mp)
    feeds = {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return mp


def ops(mp):
    return [n.op_type for n in mp.graph.node]


@pytest.fixture(autouse=True)
def _seed():
    ng.manual_seed(0)


# ------------------------------------------------------------------------- single layers
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "gelu", "softmax"])
def test_linear(activation):
    m = nn.Linear(6, 5, activation=activation)
    mp = check(m, ng.randn(3, 6))
    assert "Gemm" in ops(mp)
    w = {i.name: onnx.numpy_helper.to_array(i) for i in mp.graph.initializer}["weight"]
    assert w.shape == (5, 6)  # PyTorch's (out, in) layout, PyTorch's name


def test_linear_3d_input_and_no_bias():
    check(nn.Linear(6, 4, bias=False), ng.randn(2, 3, 6))
    check(nn.Linear(6, 4), ng.randn(2, 3, 6))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(2, 4), padding="same"), dict(kernel_size=(3, 2), stride=(2, 1)),
                                dict(kernel_size=3, padding="valid", bias=False),
                                dict(kernel_size=1, activation="relu"), dict(kernel_size=2, activation="gelu"),
                                dict(kernel_size=2, activation="softmax")])
def test_conv2d(kw):
    m = nn.Conv2d(3, 4, **kw)
    mp = check(m, ng.randn(2, 7, 6, 3))
    assert ops(mp).count("Transpose") == 2  # into NCHW once, back to NHWC once
    w = {i.name: onnx.numpy_helper.to_array(i) for i in mp.graph.initializer}["weight"]
    assert w.shape == (4, 3) + tuple(m.kernel_size)  # PyTorch's (Q, C, FH, FW)
    np.testing.assert_array_equal(w, np.transpose(np.asarray(m.weight.detach()), (0, 3, 1, 2)))


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2),
                                   nn.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 1)),
                                   nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)])
def test_pools(layer):
    check(layer, ng.randn(2, 7, 8, 3))


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.GELU("tanh"), nn.Softmax(),
                                   nn.Softmax(dim=1), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Flatten(),
                                   nn.Flatten(0, 1), nn.Flatten(1, 2)])
def test_elementwise_and_shape_layers(layer):
    check(layer, ng.randn(2, 3, 4, 5) * 3.0)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(affine):
    m = nn.LayerNorm(8, elementwise_affine=affine)
    if affine:
        with ng.no_grad():
            m.weight.copy_(ng.randn(8))
            m.bias.copy_(ng.randn(8))
    check(m, ng.randn(2, 3, 8))
    check(nn.LayerNorm((3, 8)), ng.randn(2, 3, 8))


def test_batch_norm_uses_running_statistics():
    m = nn.BatchNorm2d(4)
    for _ in range(3):  # move the running statistics away from 0/1
        m(ng.randn(5, 3, 3, 4) * 2.0 + 1.0)
    with ng.no_grad():
        m.weight.copy_(ng.randn(4))
        m.bias.copy_(ng.randn(4))
    m.train()
    mp = ng.onnx.export(m, ng.randn(2, 3, 3, 4))
    assert m.training  # the mode is restored after the export
    assert "BatchNormalization" in ops(mp)
    check(m, ng.randn(2, 3, 3, 4))


def test_batch_norm_variants():
    check(nn.BatchNorm2d(4, affine=False), ng.randn(2, 3, 3, 4))
    check(nn.BatchNorm2d(4, track_running_stats=False), ng.randn(6, 3, 3, 4), atol=1e-5)


def test_embedding():
    m = nn.Embedding(10, 4)
    idx = ng.tensor(np.array([[1, 2, 9], [0, 0, 5]], dtype=np.int64))
    mp = check(m, idx)
    assert mp.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


# ------------------------------------------------------------------------- recurrent layers
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("num_layers,bias", [(1, True), (2, True), (2, False)])
def test_recurrent(kind, num_layers, bias):
    m = getattr(nn, kind)(5, 6, num_layers=num_layers, bias=bias)
    mp = check(m, ng.randn(3, 4, 5), rtol=1e-4, atol=1e-5)
    assert ops(mp).count(kind) == num_layers


def test_recurrent_initial_states_and_relu():
    check(nn.RNN(5, 6, nonlinearity="relu"), ng.randn(3, 4, 5), rtol=1e-4, atol=1e-5)
    h0 = ng.randn(2, 3, 6)
    check(nn.GRU(5, 6, num_layers=2), ng.randn(3, 4, 5), h0, rtol=1e-4, atol=1e-5)

    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 6, num_layers=2)

        def forward(self, x, h, c):
            return self.lstm(x, (h, c))

    check(WithState(), ng.randn(3, 4, 5), ng.randn(2, 3, 6), ng.randn(2, 3, 6), rtol=1e-4, atol=1e-5)

    class ConstState(nn.Module):  # an untraced initial state becomes a constant
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(5, 6)
            self.h0 = ng.randn(1, 3, 6)

        def forward(self, x):
            return self.rnn(x, self.h0)[0]

    check(ConstState(), ng.randn(3, 4, 5), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- attention
def test_multihead_attention_self_and_cross():
    m = nn.MultiheadAttention(8, 2)
    x = ng.randn(2, 5, 8)
    check(m, x, x, x)  # output and head-averaged weights
    check(m, ng.randn(2, 3, 8), ng.randn(2, 5, 8), ng.randn(2, 5, 8))


def test_multihead_attention_masks():
    m = nn.MultiheadAttention(8, 2, bias=False)

    class Masked(nn.Module):
        def __init__(self, mha, **kw):
            super().__init__()
            self.mha, self.kw = mha, kw

        def forward(self, x, *masks):
            kw = dict(self.kw)
            names = [n for n in ("key_padding_mask", "attn_mask") if n not in kw]
            kw.update(zip(names, masks))
            return self.mha(x, x, x, **kw)

    pad = np.zeros((2, 5), dtype=bool)
    pad[0, 3:] = True
    causal = np.triu(np.ones((5, 5), dtype=bool), 1)
    x = ng.randn(2, 5, 8)
    check(Masked(m, is_causal=True), x)
    check(Masked(m, is_causal=True, need_weights=False), x)
    check(Masked(m), x, ng.tensor(pad), ng.tensor(causal))  # masks as graph inputs
    check(Masked(m, attn_mask=ng.randn(5, 5)), x, ng.tensor(pad))  # float mask as a constant
    check(Masked(m, attn_mask=ng.randn(4, 5, 5), key_padding_mask=ng.tensor(pad)), x)


def test_scaled_dot_product_attention():
    q, k, v = ng.randn(2, 2, 4, 3), ng.randn(2, 2, 6, 3), ng.randn(2, 2, 6, 3)
    allowed = np.ones((4, 6), dtype=bool)
    allowed[2, :] = False  # a query with no allowed key: zero output
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3), q, k, v)
    check(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), q, k, v, ng.tensor(allowed))


# ------------------------------------------------------------------------- whole models
class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1, activation="relu"), nn.MaxPool2d(2))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return F.log_softmax(self.fc(self.drop(self.features(x).flatten(1))), axis=-1)


def test_digits_cnn(tmp_path):
    digits, _ = ng.datasets.load_digits()
    x = ng.tensor(np.asarray(digits)[:16])
    model = DigitsCNN()
    model.train()
    path = tmp_path / "digits.onnx"
    mp = check(model, x)
    ng.onnx.export(model, x, path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded)
    assert ops(mp).count("Transpose") == 2  # one into NCHW, one back before the flatten
    assert {i.name for i in mp.graph.initializer} >= {"features.0.weight", "features.1.running_mean", "fc.weight"}
    assert not model.training and all(not m.training for m in model.modules())  # check() set eval


def test_nchw_is_kept_between_image_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = F.max_pool2d(F.gelu(self.bn(self.c1(x)) * 0.5 + 1.0), 2)
            y = F.avg_pool2d(F.leaky_relu(self.c2(y).sigmoid() - 0.25), 1)
            return y.permute(0, 3, 1, 2), y.clip(0.0, 0.5).mean(axis=(1, 2))

    mp = check(Net(), ng.randn(2, 6, 6, 2))
    # one Transpose into NCHW; the NCHW output's permute is one Transpose; the reduction needs NHWC once
    assert ops(mp).count("Transpose") == 3, ops(mp)


def test_export_restores_training_mode():
    model = DigitsCNN()
    model.train()
    model.fc.eval()
    ng.onnx.export(model, ng.randn(2, 8, 8, 1))
    assert model.training and model.features[1].training and not model.fc.training


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens):
        out, (h, c) = self.lstm(self.emb(tokens))
        return self.head(out[:, -1]), h[-1]


def test_lstm_classifier():
    tokens = ng.tensor(np.random.default_rng(0).integers(0, 20, size=(4, 7)))
    model = LSTMClassifier()
    mp = check(model, tokens, rtol=1e-4, atol=1e-5)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in mp.graph.initializer}
    assert {"emb.weight", "lstm.W_l0", "lstm.R_l1", "lstm.B_l1", "head.weight"} <= set(inits)
    # ONNX's gate order i, o, f, c from PyTorch's i, f, g, o
    w = np.asarray(model.lstm.weight_ih_l0.detach())
    np.testing.assert_array_equal(inits["lstm.W_l0"][0], np.concatenate([w[0:12], w[36:48], w[12:24], w[24:36]]))


class EncoderBlock(nn.Module):
    """A pre-LayerNorm transformer encoder block written as a user Module."""

    def __init__(self, e=16, heads=4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.attn = nn.MultiheadAttention(e, heads)
        self.mlp = nn.Sequential(nn.Linear(e, 4 * e, activation="gelu"), nn.Dropout(0.1), nn.Linear(4 * e, e))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False, is_causal=True)
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x))


def test_transformer_encoder_block():
    block = nn.Sequential(EncoderBlock(), EncoderBlock())
    check(block, ng.randn(2, 6, 16), rtol=1e-4, atol=1e-5)


def test_float64_model():
    # (onnxruntime's CPU provider has no float64 Conv kernel, so this model has none)
    m = nn.Sequential(nn.Linear(4, 6, activation="tanh", dtype=ng.float64), nn.LayerNorm(6, dtype=ng.float64),
                      nn.Flatten(), nn.Linear(18, 2, dtype=ng.float64))
    mp = check(m, ng.randn(2, 3, 4, dtype=ng.float64), rtol=1e-12, atol=1e-12)
    assert mp.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


# ------------------------------------------------------------------------- functional ops
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(ng.randn(4, 5))
        self.conv_w = nn.Parameter(ng.randn(3, 2, 2, 4))

    def forward(self, x):  # x (2, 3, 4)
        y = F.relu(x) * 2.0 - 1.0 + x.sigmoid() / 3.0
        y = (1.0 - y) ** 2 + 0.5 ** x + (-y).abs().sqrt() + x.exp().log() + x.tanh()
        z = y @ self.w                                    # (2, 3, 5)
        z = F.linear(z, ng.ones(6, 5) * 0.1, ng.arange(6).astype(ng.float32))
        z = z.reshape(2, 18).reshape(2, 3, 6).transpose(1, 2).permute(0, 2, 1)
        c = ng.concatenate([z, x], axis=2)                # (2, 3, 10)
        s = ng.stack([c, c * 0.5], axis=1)                # (2, 2, 3, 10)
        s = F.softmax(s, axis=-1) + F.log_softmax(s, axis=1) + F.gelu(s) + F.leaky_relu(s, 0.1)
        m = ng.where(s > 0.2, s, s.clip(-0.5, None) * 0.1)
        r = (m.sum(axis=(1, 3), keepdims=True) + m.mean(axis=-1, keepdims=True)
             + m.max(axis=1, keepdims=True) + m.min())     # (2, 2, 3, 10)
        t = r[:, 1, ::-1, 2:9:3] + r[..., None, -1].squeeze(-1).mean(axis=1)[..., None]
        img = x.reshape(2, 3, 4, 1).expand(2, 3, 4, 4)     # NHWC (2, 3, 4, 4)
        conv = F.conv2d(img, self.conv_w, padding="same")  # (2, 3, 4, 3)
        pooled = F.max_pool2d(conv, 2, stride=1) + F.avg_pool2d(conv, 2, stride=1, count_include_pad=False)
        ln = F.layer_norm(pooled, 3, eps=1e-3)
        u = ln.flatten(1)[:, [0, 5, 2]] + ln.flatten(1).unsqueeze(1).squeeze()[:, 1:4]
        flags = ((x < 0.0) == (x >= 0.5)) != (x <= -1.0)
        v = x[-3:-1, 5:0:-2, :-1] + x[::-1, -1:, np.array([0, 3, 1])]
        return (t, u, flags.astype(ng.float32).sum(axis=2), (x > 0.0), x.T if x.ndim == 2 else x.contiguous(),
                v, x[1, [True, False, True]], x[:, [2, 0]][[1, 0]])


def test_functional_ops_and_tensor_methods():
    check(Functional(), ng.randn(2, 3, 4), rtol=1e-5, atol=1e-5)


def test_traced_index_tensor_and_constant_folding():
    table = ng.randn(6, 6)

    def fn(x, idx):
        scale = ng.ones(6) * 3.0  # untraced: folded into a constant
        return x[idx] * scale + table[idx] + x[:, idx[0:2]].sum()

    check(fn, ng.randn(6, 6), ng.tensor(np.array([5, 0, 2], dtype=np.int64)))


def test_names_and_multiple_outputs():
    m = nn.MultiheadAttention(8, 2)
    x = ng.randn(1, 3, 8)
    mp = ng.onnx.export(m, (x, x, x), input_names=["q", "k", "v"], output_names=["out", "weights"])
    assert [i.name for i in mp.graph.input] == ["q", "k", "v"]
    assert [o.name for o in mp.graph.output] == ["out", "weights"]
    with pytest.raises(ValueError, match="output_names"):
        ng.onnx.export(m, (x, x, x), output_names=["only_one"])


# ------------------------------------------------------------------------- dynamic batch
def _run_at(mp, *inputs):
    sess = _session(mp)
    return sess.run(None, {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), inputs)})


@pytest.mark.parametrize("name", ["cnn", "lstm", "encoder"])
def test_dynamic_batch(name):
    rng = np.random.default_rng(1)
    if name == "cnn":
        model, make = DigitsCNN(), lambda n: ng.randn(n, 8, 8, 1)
    elif name == "lstm":
        model, make = LSTMClassifier(), lambda n: ng.tensor(rng.integers(0, 20, size=(n, 5)))
    else:
        model, make = nn.Sequential(EncoderBlock(8, 2), nn.Flatten(), nn.Linear(6 * 8, 3)), lambda n: ng.randn(n, 6, 8)
    model.eval()
    mp = ng.onnx.export(model, make(2), dynamic_batch=True)
    assert mp.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert mp.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for n in (1, 7):
        x = make(n)
        got = _run_at(mp, x)
        with ng.no_grad():
            expected = _flat(model(x), [])
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_refuses_batch_dependent_constants():
    m = nn.MultiheadAttention(4, 1)
    pad = ng.tensor(np.zeros((2, 3), dtype=bool))
    with pytest.raises(NotImplementedError, match="fails at batch size 3"):
        ng.onnx.export(lambda x: m(x, x, x, key_padding_mask=pad)[0], ng.randn(2, 3, 4), dynamic_batch=True)
    with pytest.raises(NotImplementedError, match="depends on the batch size"):
        ng.onnx.export(lambda x: x + ng.ones(*x.shape), ng.randn(2, 3), dynamic_batch=True)
    with pytest.raises(ValueError, match="axis 0"):
        ng.onnx.export(lambda x, y: x + y.sum(), (ng.randn(2, 3), ng.randn(3, 3)), dynamic_batch=True)


# ------------------------------------------------------------------------- errors
class WithLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return F.cross_entropy(self.fc(x), ng.tensor([0, 1]))


def test_unsupported_op_is_named():
    with pytest.raises(NotImplementedError, match="cross_entropy"):
        ng.onnx.export(WithLoss(), ng.randn(2, 4))


def test_reading_traced_values_is_an_error():
    with pytest.raises(NotImplementedError, match="item"):
        ng.onnx.export(lambda x: x * x.sum().item(), ng.randn(3))
    with pytest.raises(NotImplementedError, match="numpy"):
        ng.onnx.export(lambda x: ng.tensor(x.numpy() * 2), ng.randn(3))
    with pytest.raises(NotImplementedError, match="dropout"):
        ng.onnx.export(lambda x: F.dropout(x, 0.5, training=True), ng.randn(3))

    def inplace(x):
        y = x * 2.0
        y.add_(1.0)
        return y

    with pytest.raises(NotImplementedError, match="add_"):
        ng.onnx.export(inplace, ng.randn(3))


def test_subclass_of_a_builtin_layer_and_direct_forward_calls():
    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    class CallsForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = ScaledLinear(3, 4)
            self.gru = nn.GRU(4, 5)

        def forward(self, x):
            return self.gru.forward(self.fc.forward(x))[0]

    mp = check(CallsForward(), ng.randn(2, 6, 3), rtol=1e-4, atol=1e-5)
    assert "GRU" in ops(mp) and "Mul" in ops(mp)


def test_unknown_layer_is_named():
    from nablagrad.nn.layers import _CoreModule

    class Mystery(_CoreModule):  # a built-in-style layer the exporter has no conversion for
        def __init__(self):
            super().__init__(ng._core.nn.ReLU())

    with pytest.raises(NotImplementedError, match="Mystery"):
        ng.onnx.export(nn.Sequential(nn.Linear(3, 3), Mystery()), ng.randn(2, 3))


def test_tracing_state_is_restored_after_an_error():
    from nablagrad.nn.layers import _CoreModule

    add, relu, fwd = ng.Tensor.__add__, ng._core.relu, _CoreModule.forward
    with pytest.raises(NotImplementedError):
        ng.onnx.export(WithLoss(), ng.randn(2, 4))
    assert ng.Tensor.__add__ is add and ng._core.relu is relu and _CoreModule.forward is fwd
    x = ng.randn(2, 4)
    np.testing.assert_allclose(np.asarray(x + x), 2 * np.asarray(x))


def test_supported_lists():
    layers = ng.onnx.supported_layers()
    assert {"Linear", "Conv2d", "LSTM", "GRU", "RNN", "MultiheadAttention", "BatchNorm2d", "Embedding"} <= set(layers)
    assert {"conv2d", "linear", "scaled_dot_product_attention"} <= set(ng.onnx.supported_ops()["functional"])
    assert "dropout" not in ng.onnx.supported_ops()["functional"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="opset"):
        ng.onnx.export(nn.ReLU(), ng.randn(2), opset_version=11)


def test_missing_onnx_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"nablagrad\[onnx\]"):
        ng.onnx.export(nn.ReLU(), ng.randn(2))


def test_opset_17():
    mp = check(EncoderBlock(8, 2), ng.randn(1, 4, 8), opset_version=17, rtol=1e-4, atol=1e-5)
    assert mp.opset_import[0].version == 17
