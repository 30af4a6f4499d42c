"""fastrnn.optimizers: steps against Keras 3's update formulas written out by hand, convergence on a quadratic,
gradient clipping, per-parameter state, dtypes, lookup and bad input."""
import math

import numpy as np
import pytest

from fastrnn import optimizers
from fastrnn.optimizers import SGD, Adam, RMSprop

STEPS = 4


def problem(seed=0, shapes=((3, 2), (4,))):
    """Parameters and STEPS gradients per parameter (float64)."""
    r = np.random.default_rng(seed)
    params = [r.standard_normal(s) for s in shapes]
    grads = [[r.standard_normal(s) for s in shapes] for _ in range(STEPS)]
    return params, grads


def run(opt, params, grads):
    params = [p.copy() for p in params]
    for step_grads in grads:
        opt.apply(params, step_grads)
    return params


# ---- Keras 3 formulas, by hand (float64), one parameter at a time ---------------------------------------------------

def sgd_by_hand(w, gs, lr, momentum=0.0, nesterov=False):
    w, m = w.copy(), np.zeros_like(w)
    for g in gs:
        if momentum == 0:
            w = w - lr * g
        else:
            m = momentum * m - lr * g
            w = w + (momentum * m - lr * g if nesterov else m)
    return w


def adam_by_hand(w, gs, lr, b1, b2, eps, amsgrad=False):
    w, m, v, v_hat = w.copy(), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        if amsgrad:
            v_hat = np.maximum(v_hat, v)
            w = w - alpha * m / (np.sqrt(v_hat) + eps)
        else:
            w = w - alpha * m / (np.sqrt(v) + eps)
    return w


def rmsprop_by_hand(w, gs, lr, rho, momentum, eps, centered):
    w, v, a, mom = w.copy(), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in gs:
        v = rho * v + (1 - rho) * g * g
        if centered:
            a = rho * a + (1 - rho) * g
            increment = lr * g / np.sqrt(v - a * a + eps)
        else:
            increment = lr * g / np.sqrt(v + eps)
        if momentum > 0:
            mom = momentum * mom + increment
            w = w - mom
        else:
            w = w - increment
    return w


CASES = [
    ("sgd", lambda: SGD(), lambda w, gs: sgd_by_hand(w, gs, 0.01)),
    ("sgd-momentum", lambda: SGD(0.1, momentum=0.9), lambda w, gs: sgd_by_hand(w, gs, 0.1, 0.9)),
    ("sgd-nesterov", lambda: SGD(0.1, momentum=0.8, nesterov=True),
     lambda w, gs: sgd_by_hand(w, gs, 0.1, 0.8, True)),
    ("adam", lambda: Adam(), lambda w, gs: adam_by_hand(w, gs, 0.001, 0.9, 0.999, 1e-7)),
    ("adam-custom", lambda: Adam(0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
     lambda w, gs: adam_by_hand(w, gs, 0.05, 0.5, 0.9, 1e-3)),
    ("adam-amsgrad", lambda: Adam(0.01, amsgrad=True),
     lambda w, gs: adam_by_hand(w, gs, 0.01, 0.9, 0.999, 1e-7, amsgrad=True)),
    ("rmsprop", lambda: RMSprop(), lambda w, gs: rmsprop_by_hand(w, gs, 0.001, 0.9, 0.0, 1e-7, False)),
    ("rmsprop-centered", lambda: RMSprop(0.01, rho=0.8, centered=True),
     lambda w, gs: rmsprop_by_hand(w, gs, 0.01, 0.8, 0.0, 1e-7, True)),
    ("rmsprop-momentum", lambda: RMSprop(0.01, momentum=0.5, epsilon=1e-4),
     lambda w, gs: rmsprop_by_hand(w, gs, 0.01, 0.9, 0.5, 1e-4, False)),
    ("rmsprop-centered-momentum", lambda: RMSprop(0.02, momentum=0.9, centered=True),
     lambda w, gs: rmsprop_by_hand(w, gs, 0.02, 0.9, 0.9, 1e-7, True)),
]


@pytest.mark.parametrize("make, by_hand", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_steps_match_keras_formulas(make, by_hand):
    params, grads = problem()
    opt = make()
    got = run(opt, params, grads)
    assert opt.iterations == STEPS
    for k, p in enumerate(params):
        expected = by_hand(p, [step[k] for step in grads])
        np.testing.assert_allclose(got[k], expected, rtol=1e-12, atol=1e-15)


def test_keras_documented_rmsprop_step():
    # keras.optimizers.RMSprop docstring: var 10, loss var**2 / 2, lr 0.1 -> 9.683772 after one step
    var = np.array(10.0)
    RMSprop(learning_rate=0.1).apply([var], [var.copy()])
    assert float(var) == pytest.approx(9.683772, abs=1e-6)


KERAS_GOLDEN = {  # keras/src/optimizers/*_test.py: test_single_step and test_correctness_with_golden (4 digits)
    "sgd": (lambda: SGD(nesterov=True), [0.5, -1.0, -0.5, 3.0],
            [[0.9999] * 10] + [[0.9999 - 0.001 * k * i for i in range(1, 11)] for k in (1, 2, 3, 4)]),
    "adam": (lambda: Adam(amsgrad=True), [0.5, 1.5, 2.5, 3.5],
             [[g] * 10 for g in (0.999, 0.9982, 0.9974, 0.9965, 0.9955)]),
    "rmsprop": (lambda: RMSprop(centered=True), [-0.5811, 0.4189, 1.4189, 2.4189],
                [[g] * 10 for g in (0.9967, 0.9933, 0.9908, 0.9885, 0.9864)]),
}


@pytest.mark.parametrize("name", sorted(KERAS_GOLDEN))
def test_keras_golden_values(name):
    make, single, golden = KERAS_GOLDEN[name]
    # single step: learning_rate 0.5, defaults otherwise
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    type(make())(learning_rate=0.5).apply([w], [np.array([1.0, 6.0, 7.0, 2.0], np.float32)])
    np.testing.assert_allclose(w, single, rtol=1e-4, atol=1e-4)
    # golden: one step with gradient 0.01, then gradients 0.1 ... 1.0
    opt = make()
    x = np.ones(10, np.float32)
    opt.apply([x], [np.full(10, 0.01, np.float32)])
    for expected in golden:
        np.testing.assert_allclose(x, expected, rtol=5e-4, atol=5e-4)
        opt.apply([x], [np.arange(0.1, 1.1, 0.1, dtype=np.float32)])


def test_adam_first_step_is_lr_times_sign():
    # with bias correction, Adam's first step is -lr * g / (|g| + eps / sqrt(1 - beta_2)) ~ -lr * sign(g):
    # Keras' epsilon is "epsilon hat", added after the bias correction of sqrt(v)
    w = np.zeros(3)
    g = np.array([3.0, -0.5, 1e-3])
    Adam(learning_rate=0.1).apply([w], [g])
    np.testing.assert_allclose(w, -0.1 * g / (np.abs(g) + 1e-7 / math.sqrt(1 - 0.999)), rtol=1e-12)
    assert w[2] == pytest.approx(-0.0996848, rel=1e-6)


@pytest.mark.parametrize("make, steps", [
    (lambda: SGD(0.1), 300), (lambda: SGD(0.05, momentum=0.9), 300),
    (lambda: SGD(0.05, momentum=0.9, nesterov=True), 300),
    (lambda: Adam(0.05), 1500), (lambda: Adam(0.05, amsgrad=True), 1500),
    (lambda: RMSprop(0.01), 1500), (lambda: RMSprop(0.005, momentum=0.5, centered=True), 1500)],
    ids=["sgd", "momentum", "nesterov", "adam", "amsgrad", "rmsprop", "rmsprop-centered-momentum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_converges_on_a_quadratic(make, steps, dtype):
    # f(x, y) = 0.5 * sum(a * (x - c)**2) + 0.5 * (y - 1)**2, two parameters of different shapes
    a = np.array([[1.0, 3.0], [0.5, 2.0]])
    c = np.array([[1.0, -2.0], [0.5, 3.0]])
    x, y = np.zeros((2, 2), dtype), np.full(1, 4.0, dtype)
    opt = make()
    for _ in range(steps):
        opt.apply([x, y], [a * (x - c), y - 1.0])
    assert x.dtype == dtype and y.dtype == dtype
    np.testing.assert_allclose(x, c, atol=0.02)
    np.testing.assert_allclose(y, [1.0], atol=0.02)


# ---- clipping ---------------------------------------------------------------------------------------------------

def one_sgd_step(grads, **clip):
    params = [np.zeros_like(g) for g in grads]
    SGD(learning_rate=1.0, **clip).apply(params, grads)
    return [-p for p in params]  # the gradient the update used


def test_clipnorm_is_per_parameter():
    big, small = np.array([3.0, 4.0]), np.array([0.3, 0.4])
    used_big, used_small = one_sgd_step([big, small], clipnorm=1.0)
    np.testing.assert_allclose(used_big, [0.6, 0.8], rtol=1e-15)   # norm 5 -> 1
    np.testing.assert_allclose(used_small, small, rtol=1e-15)      # norm 0.5: unchanged
    (used_zero,) = one_sgd_step([np.zeros(3)], clipnorm=1.0)
    np.testing.assert_array_equal(used_zero, 0)


def test_global_clipnorm_scales_all_gradients_together():
    g1, g2 = np.array([3.0, 4.0]), np.array([[12.0]])              # global norm 13
    used1, used2 = one_sgd_step([g1, g2], global_clipnorm=2.6)
    np.testing.assert_allclose(used1, g1 * 0.2, rtol=1e-14)
    np.testing.assert_allclose(used2, g2 * 0.2, rtol=1e-14)
    used1, used2 = one_sgd_step([g1, g2], global_clipnorm=100.0)   # below the threshold: unchanged
    np.testing.assert_allclose(used1, g1, rtol=1e-15)
    np.testing.assert_allclose(used2, g2, rtol=1e-15)
    used = one_sgd_step([np.array([np.inf, 1.0])], global_clipnorm=1.0)[0]
    assert np.all(np.isnan(used))                                  # Keras: a non-finite global norm gives NaN


def test_clipvalue_clips_each_element():
    (used,) = one_sgd_step([np.array([-5.0, -0.2, 0.0, 0.3, 7.0])], clipvalue=0.5)
    np.testing.assert_array_equal(used, [-0.5, -0.2, 0.0, 0.3, 0.5])


def test_clipping_happens_before_the_update_rule():
    w1, w2 = np.zeros(2), np.zeros(2)
    Adam(0.1, clipvalue=1.0).apply([w1], [np.array([10.0, -0.5])])
    Adam(0.1).apply([w2], [np.array([1.0, -0.5])])
    np.testing.assert_array_equal(w1, w2)


def test_clipping_arguments():
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="only one of"):
        Adam(global_clipnorm=1.0, clipnorm=2.0)
    for kw in ({"clipnorm": 0.0}, {"clipvalue": -1.0}, {"global_clipnorm": math.inf}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            RMSprop(**kw)
    with pytest.raises(TypeError, match="clipnorm"):
        SGD(clipnorm="1")


# ---- state ------------------------------------------------------------------------------------------------------

def test_state_is_per_parameter_and_lazy():
    opt = Adam(0.1)
    a, b = np.zeros(3), np.zeros(3)
    assert opt.get_slots(a) == {}
    opt.apply([a], [np.ones(3)])
    assert set(opt.get_slots(a)) == {"momentum", "velocity"} and opt.get_slots(b) == {}
    opt.apply([a, b], [np.ones(3), -np.ones(3)])
    assert opt.iterations == 2                     # one per apply(), not per parameter
    np.testing.assert_allclose(opt.get_slots(a)["momentum"], 0.19)   # two steps of g = 1
    np.testing.assert_allclose(opt.get_slots(b)["momentum"], -0.1)   # one step of g = -1
    # identity, not value, is the key: an equal copy is a new parameter
    c = a.copy()
    opt.apply([c], [np.ones(3)])
    np.testing.assert_allclose(opt.get_slots(c)["momentum"], 0.1)
    np.testing.assert_allclose(opt.get_slots(a)["momentum"], 0.19)   # untouched
    opt.reset()
    assert opt.iterations == 0 and opt.get_slots(a) == {}


def test_slots_per_option():
    w = np.zeros(2)
    cases = [(SGD(), set()), (SGD(momentum=0.5), {"momentum"}), (Adam(amsgrad=True), {"momentum", "velocity",
             "velocity_hat"}), (RMSprop(), {"velocity"}), (RMSprop(momentum=0.1, centered=True),
                                                            {"velocity", "momentum", "average_gradient"})]
    for opt, slots in cases:
        opt.apply([w], [np.ones(2)])
        assert set(opt.get_slots(w)) == slots, opt


def test_updates_in_place_and_leaves_gradients_alone():
    params, grads = problem()
    keep = [p for p in params]
    g0 = [g.copy() for g in grads[0]]
    opt = RMSprop(0.1, clipnorm=0.5)
    opt.apply(params, grads[0])
    assert all(p is k for p, k in zip(params, keep))
    assert not np.array_equal(params[0], problem()[0][0])
    for g, g_before in zip(grads[0], g0):
        np.testing.assert_array_equal(g, g_before)


@pytest.mark.parametrize("make", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_float32_params_keep_float32_slots(make):
    params, grads = problem()
    p32 = [p.astype(np.float32) for p in params]
    opt = make()
    for step in grads:
        opt.apply(p32, step)                        # float64 gradients are cast to the parameter's dtype
    assert all(p.dtype == np.float32 for p in p32)
    assert all(s.dtype == np.float32 for p in p32 for s in opt.get_slots(p).values())
    p64 = run(make(), params, grads)
    for a, b in zip(p32, p64):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_none_gradient_skips_its_parameter():
    a, b = np.zeros(2), np.zeros(2)
    opt = SGD(0.5, momentum=0.5)
    opt.apply([a, b], [np.ones(2), None])
    np.testing.assert_array_equal(a, -0.5)
    np.testing.assert_array_equal(b, 0.0)
    assert opt.get_slots(b) == {} and opt.iterations == 1
    with pytest.raises(ValueError, match="no gradient for any parameter"):
        opt.apply([a, b], [None, None])
    opt.apply([], [])                                # nothing to do: not a step
    assert opt.iterations == 1


def test_learning_rate_can_be_changed():
    w = np.zeros(1)
    opt = SGD(0.1)
    opt.apply([w], [np.ones(1)])
    opt.learning_rate = 1.0
    opt.apply([w], [np.ones(1)])
    np.testing.assert_allclose(w, [-1.1])
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0


# ---- lookup and bad input ---------------------------------------------------------------------------------------

def test_get():
    assert type(optimizers.get("sgd")) is SGD and type(optimizers.get("Adam")) is Adam
    assert type(optimizers.get("rmsprop")) is RMSprop and type(optimizers.get(RMSprop)) is RMSprop
    opt = Adam(0.01)
    assert optimizers.get(opt) is opt
    assert optimizers.get("sgd").learning_rate == 0.01 and optimizers.get("adam").learning_rate == 0.001
    assert optimizers.get("adam").epsilon == 1e-7
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; known optimizers: adam, rmsprop, sgd"):
        optimizers.get("adagrad")
    with pytest.raises(TypeError, match="optimizer must be"):
        optimizers.get(0.1)
    assert repr(SGD(0.1, momentum=0.9)) == "SGD(learning_rate=0.1, momentum=0.9, nesterov=False)"


@pytest.mark.parametrize("make, exc, match", [
    (lambda: SGD(learning_rate=-0.1), ValueError, "learning_rate"),
    (lambda: SGD(learning_rate=math.nan), ValueError, "learning_rate"),
    (lambda: SGD(learning_rate="0.1"), TypeError, "learning_rate"),
    (lambda: SGD(learning_rate=True), TypeError, "learning_rate"),
    (lambda: SGD(momentum=1.5), ValueError, "momentum"),
    (lambda: SGD(nesterov=1), TypeError, "nesterov"),
    (lambda: Adam(beta_1=1.0), ValueError, "beta_1"),
    (lambda: Adam(beta_2=-0.1), ValueError, "beta_2"),
    (lambda: Adam(epsilon=0.0), ValueError, "epsilon"),
    (lambda: Adam(amsgrad="no"), TypeError, "amsgrad"),
    (lambda: RMSprop(rho=1.1), ValueError, "rho"),
    (lambda: RMSprop(momentum=-0.5), ValueError, "momentum"),
    (lambda: RMSprop(centered=None), TypeError, "centered"),
    (lambda: Adam(name=""), TypeError, "name"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_apply_arguments():
    opt = SGD()
    w = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"grads must have one entry per parameter: got 2 gradients for 1"):
        opt.apply([w], [np.zeros((2, 3)), np.zeros(1)])
    with pytest.raises(ValueError, match=r"grads\[0\] must have the shape of params\[0\], \(2, 3\); "
                                         r"got shape \(3, 2\)"):
        opt.apply([w], [np.zeros((3, 2))])
    with pytest.raises(TypeError, match=r"params\[0\] must be float32 or float64; got dtype int64"):
        opt.apply([np.zeros(3, np.int64)], [np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\[1\] must be a numpy array"):
        opt.apply([w, [1.0]], [w, [1.0]])
    with pytest.raises(TypeError, match="params must be a list"):
        opt.apply(w, [w])
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        opt.apply([ro], [np.ones(2)])
    with pytest.raises(ValueError, match=r"params\[1\] appears more than once"):
        opt.apply([w, w], [np.ones((2, 3)), np.ones((2, 3))])
    with pytest.raises(TypeError, match=r"grads\[0\] must be a real numeric array"):
        opt.apply([w], [np.full((2, 3), "a")])
    assert opt.iterations == 0
    np.testing.assert_array_equal(w, 0)
