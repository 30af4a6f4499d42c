"""fastrnn.losses: values against plain formulas, gradients against finite differences (float64), from_logits
against the probability forms, extreme logits, Keras' clipping and reduction, lookup and bad input."""
import math

import numpy as np
import pytest

from fastrnn import losses
from fastrnn.losses import (BinaryCrossentropy, CategoricalCrossentropy, MeanAbsoluteError, MeanSquaredError,
                            SparseCategoricalCrossentropy)

EPS = 1e-7


def rng(seed=0):
    return np.random.default_rng(seed)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def one_hot(labels, n):
    return np.eye(n)[labels]


def finite_difference(fn, p, h=1e-6):
    """Central differences of the scalar fn(p) with respect to every element of p (float64)."""
    grad = np.zeros_like(p)
    for idx in np.ndindex(p.shape):
        plus, minus = p.copy(), p.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


def assert_gradient(loss, y_true, y_pred, rtol=1e-6):
    analytic = loss.gradient(y_true, y_pred)
    assert analytic.shape == np.shape(y_pred) and analytic.dtype == np.float64
    numeric = finite_difference(lambda p: loss(y_true, p), y_pred)
    scale = max(np.abs(numeric).max(), 1e-12)
    assert np.abs(analytic - numeric).max() <= rtol * scale, (analytic, numeric)


# ---- plain formulas (loops over rows, written independently of the implementation) -----------------------------

def rows(a):
    """All rows along the last axis, as a list of 1-D arrays (a rank-1 array is one row)."""
    a = np.asarray(a, np.float64)
    return list(a.reshape(-1, a.shape[-1]))


def plain_mse(t, p):
    return np.mean([np.mean((pr - tr) ** 2) for tr, pr in zip(rows(t), rows(p))])


def plain_mae(t, p):
    return np.mean([np.mean(np.abs(pr - tr)) for tr, pr in zip(rows(t), rows(p))])


def plain_bce(t, p):
    out = []
    for tr, pr in zip(rows(t), rows(p)):
        pr = np.clip(pr, EPS, 1 - EPS)
        out.append(np.mean(-(tr * np.log(pr) + (1 - tr) * np.log(1 - pr))))
    return np.mean(out)


def plain_bce_logits(t, z):
    return np.mean([np.mean(-(tr * np.log(sigmoid(zr)) + (1 - tr) * np.log(1 - sigmoid(zr))))
                    for tr, zr in zip(rows(t), rows(z))])


def plain_cce(t, p):
    out = []
    for tr, pr in zip(rows(t), rows(p)):
        q = np.clip(pr / pr.sum(), EPS, 1 - EPS)
        out.append(-np.sum(tr * np.log(q)))
    return np.mean(out)


def plain_cce_logits(t, z):
    return np.mean([-np.sum(tr * np.log(softmax(zr))) for tr, zr in zip(rows(t), rows(z))])


# ---- problems ---------------------------------------------------------------------------------------------------

SHAPES = [(4, 3), (2, 5, 3), (6,)]  # batch, sequence (B, T, C), and a single row
SHAPE_IDS = ["2d", "seq", "1d"]


def regression(shape, seed=0):
    r = rng(seed)
    return r.standard_normal(shape), r.standard_normal(shape)


def binary(shape, seed=0, soft=False):
    r = rng(seed)
    t = r.uniform(0, 1, shape) if soft else r.integers(0, 2, shape).astype(np.float64)
    return t, r.uniform(0.05, 0.95, shape)


def categorical(shape, seed=0, soft=False):
    r = rng(seed)
    n = shape[-1]
    if soft:
        t = r.uniform(0.1, 1, shape)
        t /= t.sum(axis=-1, keepdims=True)
    else:
        t = one_hot(r.integers(0, n, shape[:-1]), n)
    return t, r.uniform(0.1, 1.0, shape)  # not normalised: the gradient must go through Keras' renormalisation


# ---- values -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_values_match_plain_formulas(shape):
    t, p = regression(shape)
    assert MeanSquaredError()(t, p) == pytest.approx(plain_mse(t, p), rel=1e-12)
    assert MeanAbsoluteError()(t, p) == pytest.approx(plain_mae(t, p), rel=1e-12)
    for soft in (False, True):
        t, p = binary(shape, soft=soft)
        assert BinaryCrossentropy()(t, p) == pytest.approx(plain_bce(t, p), rel=1e-12)
        z = rng(3).standard_normal(shape) * 3
        assert BinaryCrossentropy(from_logits=True)(t, z) == pytest.approx(plain_bce_logits(t, z), rel=1e-10)
        t, p = categorical(shape, soft=soft)
        assert CategoricalCrossentropy()(t, p) == pytest.approx(plain_cce(t, p), rel=1e-12)
        assert CategoricalCrossentropy(from_logits=True)(t, p * 4) == pytest.approx(plain_cce_logits(t, p * 4),
                                                                                     rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_equals_categorical_on_one_hot(shape, from_logits):
    labels = rng(1).integers(0, shape[-1], shape[:-1])
    _, p = categorical(shape)
    dense, sparse = CategoricalCrossentropy(from_logits), SparseCategoricalCrossentropy(from_logits)
    t = one_hot(labels, shape[-1])
    assert sparse(labels, p) == pytest.approx(dense(t, p), rel=1e-14)
    np.testing.assert_allclose(sparse.gradient(labels, p), dense.gradient(t, p), rtol=1e-14)


def test_known_values():
    assert BinaryCrossentropy()([0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]) == \
        pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.4)) / 4, rel=1e-12)
    # Keras' BinaryCrossentropy docstring example (from_logits=True): 0.865
    assert BinaryCrossentropy(from_logits=True)([0, 1, 0, 0], [-18.6, 0.51, 2.94, -12.8]) == \
        pytest.approx(0.865, abs=2e-3)
    assert SparseCategoricalCrossentropy()([0, 1, 2], [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]]) == \
        pytest.approx(np.mean([-math.log(0.9), -math.log(0.8), -math.log(0.5)]), rel=1e-12)
    assert MeanSquaredError()([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]) == pytest.approx(0.5)
    assert MeanAbsoluteError()([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]) == pytest.approx(0.5)


def test_sequence_reduction_is_mean_over_batch_and_timesteps():
    B, T, C = 3, 4, 5
    r = rng(7)
    labels = r.integers(0, C, (B, T))
    z = r.standard_normal((B, T, C))
    for loss in (SparseCategoricalCrossentropy(from_logits=True), SparseCategoricalCrossentropy()):
        y = z if loss.from_logits else softmax(z)
        per_step = [loss(labels[b, t][None], y[b, t][None]) for b in range(B) for t in range(T)]
        assert loss(labels, y) == pytest.approx(np.mean(per_step), rel=1e-12)
        flat = loss.gradient(labels.reshape(-1), y.reshape(-1, C)).reshape(B, T, C)
        np.testing.assert_allclose(loss.gradient(labels, y), flat, rtol=1e-12)


def test_value_and_gradient_agree_with_separate_calls():
    for loss, (t, p) in [(MeanSquaredError(), regression((3, 2))), (BinaryCrossentropy(), binary((3, 2))),
                         (CategoricalCrossentropy(), categorical((3, 4)))]:
        value, grad = loss.value_and_gradient(t, p)
        assert isinstance(value, float) and value == loss(t, p)
        np.testing.assert_array_equal(grad, loss.gradient(t, p))


# ---- gradients against finite differences -----------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gradient_mse_mae(shape):
    t, p = regression(shape)
    assert_gradient(MeanSquaredError(), t, p)
    assert_gradient(MeanAbsoluteError(), t, p)  # |p - t| is smooth away from p == t


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_gradient_binary_crossentropy(shape, soft):
    t, p = binary(shape, soft=soft)
    assert_gradient(BinaryCrossentropy(), t, p)
    assert_gradient(BinaryCrossentropy(from_logits=True), t, rng(5).standard_normal(shape) * 3)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_gradient_categorical_crossentropy(shape, soft):
    t, p = categorical(shape, soft=soft)
    assert_gradient(CategoricalCrossentropy(), t, p)
    assert_gradient(CategoricalCrossentropy(from_logits=True), t, rng(5).standard_normal(shape) * 3)
    assert_gradient(CategoricalCrossentropy(from_logits=True), t * 2.5, p)  # targets that do not sum to 1


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gradient_sparse_categorical_crossentropy(shape):
    labels = rng(2).integers(0, shape[-1], shape[:-1])
    _, p = categorical(shape)
    assert_gradient(SparseCategoricalCrossentropy(), labels, p)
    assert_gradient(SparseCategoricalCrossentropy(from_logits=True), labels, rng(5).standard_normal(shape) * 3)


def test_gradient_with_trailing_axis_of_one():
    t = np.array([1.0, 0.0, 1.0])
    p = np.array([[0.3], [0.6], [0.9]])
    for loss in (MeanSquaredError(), BinaryCrossentropy()):
        assert loss(t, p) == pytest.approx(loss(t[:, None], p), rel=1e-15)
        assert loss.gradient(t, p).shape == (3, 1)
        assert_gradient(loss, t, p)
    assert_gradient(MeanSquaredError(), t[:, None], p[:, 0])  # the reverse: y_true (B, 1), y_pred (B,)


# ---- from_logits against the probability forms -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)], ids=["2d", "seq"])
def test_from_logits_matches_softmax_probabilities(shape):
    z = rng(11).standard_normal(shape) * 2
    p = softmax(z)
    for t in (categorical(shape, seed=1)[0], categorical(shape, seed=2, soft=True)[0]):
        logit_loss, prob_loss = CategoricalCrossentropy(from_logits=True), CategoricalCrossentropy()
        assert logit_loss(t, z) == pytest.approx(prob_loss(t, p), rel=1e-12)
        # chain rule through softmax: dL/dz_k = p_k (g_k - sum_j g_j p_j)
        g = prob_loss.gradient(t, p)
        through_softmax = p * (g - np.sum(g * p, axis=-1, keepdims=True))
        np.testing.assert_allclose(logit_loss.gradient(t, z), through_softmax, rtol=1e-9, atol=1e-15)
    labels = rng(3).integers(0, shape[-1], shape[:-1])
    assert SparseCategoricalCrossentropy(from_logits=True)(labels, z) == \
        pytest.approx(SparseCategoricalCrossentropy()(labels, p), rel=1e-12)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 1)], ids=["2d", "seq"])
def test_from_logits_matches_sigmoid_probabilities(shape):
    z = rng(12).standard_normal(shape) * 2
    p = sigmoid(z)
    for t in (binary(shape, seed=1)[0], binary(shape, seed=2, soft=True)[0]):
        logit_loss, prob_loss = BinaryCrossentropy(from_logits=True), BinaryCrossentropy()
        assert logit_loss(t, z) == pytest.approx(prob_loss(t, p), rel=1e-12)
        np.testing.assert_allclose(logit_loss.gradient(t, z), prob_loss.gradient(t, p) * p * (1 - p), rtol=1e-9)


@pytest.mark.filterwarnings("error")  # no overflow / divide warnings either
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_are_finite_and_exact(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype)
    sparse = SparseCategoricalCrossentropy(from_logits=True)
    value, grad = sparse.value_and_gradient([0, 0], z)
    # row 0: label has the largest logit -> 0; row 1: log(2 e^{1e4}) - (-1e4) = 2e4 + log 2
    assert value == pytest.approx((0.0 + 2e4 + math.log(2)) / 2, rel=1e-6)
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.array([[0, 0, 0], [-1, 0.5, 0.5]]) / 2, atol=1e-6)
    dense = CategoricalCrossentropy(from_logits=True)
    assert dense([[1, 0, 0], [1, 0, 0]], z) == pytest.approx(value, rel=1e-6)

    bce = BinaryCrossentropy(from_logits=True)
    zb = np.array([[1e4, -1e4], [1e4, -1e4]], dtype)
    value, grad = bce.value_and_gradient(np.array([[1, 0], [0, 1]], dtype), zb)
    assert value == pytest.approx(1e4 / 2, rel=1e-6)  # row 0 right (0), row 1 wrong (1e4 each)
    np.testing.assert_allclose(grad, np.array([[0, 0], [1, -1]]) / 4, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probabilities_are_clipped_like_keras(dtype):
    log_eps = -math.log(dtype(EPS))
    # a confident wrong prediction costs -log(1e-7), and the clipped entries pass no gradient
    bce = BinaryCrossentropy()
    value, grad = bce.value_and_gradient(np.array([[1.0, 0.0]], dtype), np.array([[0.0, 0.5]], dtype))
    assert value == pytest.approx((log_eps + math.log(2)) / 2, rel=1e-5)
    assert grad[0, 0] == 0 and grad[0, 1] == pytest.approx(1.0, rel=1e-5)  # (1/(1-0.5)) / 2
    cce = CategoricalCrossentropy()
    assert cce([[1.0, 0.0]], np.array([[0.0, 1.0]], dtype)) == pytest.approx(log_eps, rel=1e-5)
    assert np.all(cce.gradient([[1.0, 0.0]], np.array([[0.0, 1.0]], dtype)) == 0)
    assert SparseCategoricalCrossentropy()([1], np.array([[0.0, 1.0]], dtype)) == \
        pytest.approx(-math.log(1 - dtype(EPS)), rel=1e-3)


def test_dtypes():
    t, p = categorical((5, 4))
    for loss in (MeanSquaredError(), MeanAbsoluteError(), BinaryCrossentropy(), CategoricalCrossentropy(),
                 CategoricalCrossentropy(from_logits=True), BinaryCrossentropy(from_logits=True)):
        v32, g32 = loss.value_and_gradient(t, p.astype(np.float32))
        v64, g64 = loss.value_and_gradient(t, p)
        assert isinstance(v32, float) and g32.dtype == np.float32 and g64.dtype == np.float64
        assert v32 == pytest.approx(v64, rel=1e-5)
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-7)
    # integer predictions compute in float32 (Keras' floatx); y_true of any numeric dtype is cast to y_pred's
    assert MeanSquaredError().gradient([1, 2], [3, 3]).dtype == np.float32
    assert MeanSquaredError()(np.array([1, 2], np.int8), np.array([1.5, 2.5])) == 0.25


def test_inputs_are_not_modified():
    t, p = categorical((3, 4))
    t0, p0 = t.copy(), p.copy()
    for loss in (CategoricalCrossentropy(), CategoricalCrossentropy(from_logits=True), MeanSquaredError()):
        loss.value_and_gradient(t, p)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(p, p0)


# ---- lookup -----------------------------------------------------------------------------------------------------

def test_get():
    for name, cls in [("mse", MeanSquaredError), ("mean_squared_error", MeanSquaredError),
                      ("mae", MeanAbsoluteError), ("mean_absolute_error", MeanAbsoluteError),
                      ("binary_crossentropy", BinaryCrossentropy),
                      ("categorical_crossentropy", CategoricalCrossentropy),
                      ("sparse_categorical_crossentropy", SparseCategoricalCrossentropy),
                      ("SparseCategoricalCrossentropy", SparseCategoricalCrossentropy)]:
        loss = losses.get(name)
        assert type(loss) is cls
        assert getattr(loss, "from_logits", False) is False
    inst = BinaryCrossentropy(from_logits=True)
    assert losses.get(inst) is inst
    assert type(losses.get(MeanSquaredError)) is MeanSquaredError
    assert losses.get("mean_squared_error").name == "mean_squared_error"
    assert MeanSquaredError().name == "mean_squared_error"
    assert repr(CategoricalCrossentropy(from_logits=True)) == "CategoricalCrossentropy(from_logits=True)"
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*binary_crossentropy.*mse"):
        losses.get("hinge")
    with pytest.raises(TypeError, match="loss must be"):
        losses.get(3)
    with pytest.raises(TypeError, match="loss must be"):
        losses.get(lambda t, p: 0.0)  # a plain function has no gradient


# ---- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [MeanSquaredError(), MeanAbsoluteError(), BinaryCrossentropy(),
                                  CategoricalCrossentropy(), CategoricalCrossentropy(from_logits=True)],
                         ids=lambda l: repr(l))
def test_shape_mismatch(loss):
    for t_shape, p_shape in [((4, 3), (4, 2)), ((3, 3), (4, 3)), ((4,), (4, 3)), ((2, 5, 3), (2, 3))]:
        with pytest.raises(ValueError, match=r"y_true.*y_pred.*" + f"y_true shape {t_shape}".replace("(", r"\(")
                           .replace(")", r"\)")):
            loss(np.zeros(t_shape), np.full(p_shape, 0.5))
        with pytest.raises(ValueError):
            loss.gradient(np.zeros(t_shape), np.full(p_shape, 0.5))


def test_categorical_with_class_ids_suggests_sparse():
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        CategoricalCrossentropy()([0, 2], np.full((2, 3), 1 / 3))


def test_sparse_bad_labels():
    loss = SparseCategoricalCrossentropy()
    p = np.full((2, 3), 1 / 3)
    assert loss([[0], [2]], p) == pytest.approx(math.log(3))  # (B, 1) labels are fine, as in Keras
    assert loss([0.0, 2.0], p) == pytest.approx(math.log(3))  # integral floats are fine
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\].*from 0 to 3"):
        loss([0, 3], p)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\]"):
        loss([-1, 0], p)
    with pytest.raises(ValueError, match="integer class ids"):
        loss([0.5, 1.0], p)
    with pytest.raises(ValueError, match=r"y_true must hold one class id per row.*\(2,\).*y_pred shape \(2, 3\).*"
                                         r"y_true shape \(2, 3\)"):
        loss(np.eye(3)[:2], p)
    with pytest.raises(ValueError, match=r"y_true shape \(3,\)"):
        loss([0, 1, 2], p)


def test_other_bad_input():
    with pytest.raises(TypeError, match="from_logits"):
        BinaryCrossentropy(from_logits="yes")
    with pytest.raises(TypeError, match="y_pred"):
        MeanSquaredError()([1.0], ["a"])
    with pytest.raises(TypeError, match="y_true"):
        MeanSquaredError()(["a"], [1.0])
    with pytest.raises(ValueError, match="y_pred must have at least one axis"):
        MeanSquaredError()(1.0, 1.0)
    with pytest.raises(ValueError, match="y_pred must not be empty"):
        MeanSquaredError()(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(TypeError, match="name"):
        MeanSquaredError(name=3)
