"""Optimizers for the Keras-style model API: SGD, Adam and RMSprop with Keras 3's update rules.

    opt = optimizers.Adam(learning_rate=1e-3, clipnorm=1.0)
    opt.apply(params, grads)        # params: list of float32/float64 numpy arrays, updated in place
    opt.iterations                  # number of apply() calls that updated something

Each optimizer keeps its slots (momenta, velocities, ...) per parameter array, keyed by the array's identity and
created on the first apply() that sees that array, with its shape and dtype. Gradients are cast to their
parameter's dtype, and the update runs in that dtype, as in Keras. A gradient of None leaves its parameter (and its
slots) untouched, as Keras does for missing gradients.

Gradient clipping (at most one of them, as in Keras), applied before the update:
- clipnorm: each gradient g is scaled by clipnorm / max(||g||, clipnorm) (its own L2 norm);
- global_clipnorm: all gradients are scaled by global_clipnorm / max(N, global_clipnorm), N the L2 norm of all of
  them together (NaN everywhere if N is not finite, as in Keras);
- clipvalue: every element is clipped to [-clipvalue, clipvalue].

Keras-specific notes: the step count in Adam's bias correction is the optimizer's global `iterations + 1` (a
parameter first seen at a later step starts with zero slots at that step; Keras would refuse a new variable).
Keras stores learning_rate as a float32 variable; here it stays the Python float given, so float64 parameters
use exactly that value (float32 parameters see the same float32 value as in Keras).
"""
import math
import numbers

import numpy as np

from ._checks import FLOAT_DTYPES, boolean

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get", "names"]


def _real(name, value, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """A finite real number in [low, high] (open ends where asked); bools are not numbers here."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{' or None' if allow_none else ''}; got {value!r}")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}; got {value!r}")
    return value


class Optimizer:
    """Base class. Subclasses define `_slot_names` and `_update(param, grad, slots, step)`."""

    _slot_names = ()

    def __init__(self, learning_rate, clipnorm=None, clipvalue=None, global_clipnorm=None, name=None):
        self.learning_rate = learning_rate
        self.clipnorm = _real("clipnorm", clipnorm, low=0, low_open=True, allow_none=True)
        self.clipvalue = _real("clipvalue", clipvalue, low=0, low_open=True, allow_none=True)
        self.global_clipnorm = _real("global_clipnorm", global_clipnorm, low=0, low_open=True, allow_none=True)
        n_clips = sum(v is not None for v in (self.clipnorm, self.clipvalue, self.global_clipnorm))
        if n_clips > 1:
            raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set; got clipnorm="
                             f"{clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string; got {name!r}")
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._state = {}  # id(param) -> (param, {slot name: array}); holding param keeps its id from being reused

    # -- learning rate -------------------------------------------------------------------------------------------
    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = _real("learning_rate", value, low=0)

    # -- state ---------------------------------------------------------------------------------------------------
    def get_slots(self, param):
        """The slot arrays of `param` (live arrays, keyed by slot name); {} if apply() has not seen it yet."""
        entry = self._state.get(id(param))
        return entry[1] if entry is not None and entry[0] is param else {}

    def _slots_for(self, param):
        entry = self._state.get(id(param))
        if entry is None or entry[0] is not param:
            entry = (param, {name: np.zeros_like(param) for name in self._active_slots()})
            self._state[id(param)] = entry
        return entry[1]

    def _active_slots(self):
        return self._slot_names

    def reset(self):
        """Forget all slots and set iterations back to 0."""
        self._state.clear()
        self.iterations = 0

    # -- apply ---------------------------------------------------------------------------------------------------
    def apply(self, params, grads):
        """One optimisation step: updates every array of `params` in place from the matching entry of `grads`."""
        params, grads = self._check(params, grads)
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        if not params:
            return
        if not pairs:
            raise ValueError("grads has no gradient for any parameter (every entry is None)")
        grads = self._clip([g for _, g in pairs])
        step = self.iterations + 1
        for (p, _), g in zip(pairs, grads):
            self._update(p, g, self._slots_for(p), step)
        self.iterations += 1

    def _check(self, params, grads):
        if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list of numpy arrays; got {type(params).__name__}")
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list of arrays (or None); got {type(grads).__name__}")
        if len(params) != len(grads):
            raise ValueError(f"grads must have one entry per parameter: got {len(grads)} gradients for "
                             f"{len(params)} parameters")
        seen = set()
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{i}] must be a numpy array (updated in place); got {type(p).__name__}")
            if p.dtype not in FLOAT_DTYPES:
                raise TypeError(f"params[{i}] must be float32 or float64; got dtype {p.dtype}")
            if not p.flags.writeable:
                raise ValueError(f"params[{i}] is read-only; the optimizer updates parameters in place")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears more than once in params")
            seen.add(id(p))
            if g is not None:
                try:
                    g = np.asarray(g)
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"grads[{i}] must be a numeric array; could not convert: {exc}") from None
                if g.dtype.kind not in "biuf":
                    raise TypeError(f"grads[{i}] must be a real numeric array; got dtype {g.dtype}")
                if g.shape != p.shape:
                    raise ValueError(f"grads[{i}] must have the shape of params[{i}], {p.shape}; got shape {g.shape}")
                g = g.astype(p.dtype, copy=False)
            out.append(g)
        return list(params), out

    def _clip(self, grads):
        """Keras' _clip_gradients; norms are accumulated in float64."""
        if self.clipnorm is not None:
            c = self.clipnorm
            clipped = []
            for g in grads:
                dt = g.dtype.type
                norm = math.sqrt(float(np.sum(np.square(g, dtype=np.float64))))
                clipped.append((g * dt(c)) / dt(max(norm, c)) if not math.isnan(norm) else g * dt(math.nan))
            return clipped
        if self.global_clipnorm is not None:
            c = self.global_clipnorm
            norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
            if math.isfinite(norm):
                scale = c * min(1.0 / norm if norm > 0 else math.inf, 1.0 / c)
            else:
                scale = math.nan  # Keras: scale + (norm - norm)
            return [g * g.dtype.type(scale) for g in grads]
        if self.clipvalue is not None:
            v = self.clipvalue
            return [np.clip(g, g.dtype.type(-v), g.dtype.type(v)) for g in grads]
        return grads

    def _update(self, param, grad, slots, step):
        raise NotImplementedError

    # -- description ---------------------------------------------------------------------------------------------
    def get_config(self):
        return {"name": self.name, "learning_rate": self.learning_rate, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    def __repr__(self):
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "name" and v is not None)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent, with optional (Nesterov) momentum; Keras 3 update:

        momentum == 0:  w -= lr * g
        else:           m = momentum * m - lr * g
                        w += m                           (nesterov=False)
                        w += momentum * m - lr * g       (nesterov=True)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, clipnorm, clipvalue, global_clipnorm, name)
        self.momentum = _real("momentum", momentum, low=0, high=1)
        self.nesterov = boolean("nesterov", nesterov)

    def _active_slots(self):
        return ("momentum",) if self.momentum != 0 else ()

    def _update(self, param, grad, slots, step):
        dt = param.dtype.type
        lr = dt(self.learning_rate)
        if self.momentum == 0:
            param -= grad * lr
            return
        if "momentum" not in slots:  # momentum was changed from 0 after this parameter was first seen
            slots["momentum"] = np.zeros_like(param)
        m = slots["momentum"]
        mu = dt(self.momentum)
        m *= mu
        m -= grad * lr
        if self.nesterov:
            param += m * mu - grad * lr
        else:
            param += m

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam; Keras 3 update, with t = iterations + 1 and epsilon outside the square root ("epsilon hat"):

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
        amsgrad: v_hat = max(v_hat, v), used in place of v
        w -= alpha * m / (sqrt(v) + epsilon)
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, clipnorm, clipvalue, global_clipnorm, name)
        self.beta_1 = _real("beta_1", beta_1, low=0, high=1, high_open=True)
        self.beta_2 = _real("beta_2", beta_2, low=0, high=1, high_open=True)
        self.epsilon = _real("epsilon", epsilon, low=0, low_open=True)
        self.amsgrad = boolean("amsgrad", amsgrad)

    def _active_slots(self):
        return ("momentum", "velocity", "velocity_hat") if self.amsgrad else ("momentum", "velocity")

    def _update(self, param, grad, slots, step):
        dt = param.dtype.type
        t = dt(step)
        beta_1_power = dt(self.beta_1) ** t
        beta_2_power = dt(self.beta_2) ** t
        alpha = dt(self.learning_rate) * np.sqrt(dt(1) - beta_2_power) / (dt(1) - beta_1_power)
        m, v = slots["momentum"], slots["velocity"]
        m += (grad - m) * dt(1 - self.beta_1)
        v += (np.square(grad) - v) * dt(1 - self.beta_2)
        if self.amsgrad:
            if "velocity_hat" not in slots:
                slots["velocity_hat"] = np.zeros_like(param)
            v_hat = slots["velocity_hat"]
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        param -= (m * alpha) / (np.sqrt(v) + dt(self.epsilon))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad}


class RMSprop(Optimizer):
    """RMSprop; Keras 3 update (epsilon inside the square root):

        v = rho * v + (1 - rho) * g**2
        centered: a = rho * a + (1 - rho) * g;  d = v - a**2 + epsilon,   else d = v + epsilon
        increment = lr * g / sqrt(d)
        momentum > 0: mom = momentum * mom + increment;  w -= mom,        else w -= increment
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, clipnorm, clipvalue, global_clipnorm, name)
        self.rho = _real("rho", rho, low=0, high=1)
        self.momentum = _real("momentum", momentum, low=0, high=1)
        self.epsilon = _real("epsilon", epsilon, low=0, low_open=True)
        self.centered = boolean("centered", centered)

    def _active_slots(self):
        return ("velocity",) + (("momentum",) if self.momentum > 0 else ()) + \
            (("average_gradient",) if self.centered else ())

    def _update(self, param, grad, slots, step):
        dt = param.dtype.type
        rho = dt(self.rho)
        for name in self._active_slots():  # options switched on after this parameter was first seen
            if name not in slots:
                slots[name] = np.zeros_like(param)
        v = slots["velocity"]
        v *= rho
        v += dt(1 - self.rho) * np.square(grad)
        if self.centered:
            a = slots["average_gradient"]
            a *= rho
            a += dt(1 - self.rho) * grad
            denominator = v - np.square(a) + dt(self.epsilon)
        else:
            denominator = v + dt(self.epsilon)
        increment = dt(self.learning_rate) * grad / np.sqrt(denominator)
        if self.momentum > 0:
            mom = slots["momentum"]
            mom *= dt(self.momentum)
            mom += increment
            param -= mom
        else:
            param -= increment

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def names():
    """The optimizer names `get` accepts (case-insensitive)."""
    return sorted(_BY_NAME)


def get(identifier):
    """An optimizer from a name ("sgd", "adam", "rmsprop"; any case, Keras defaults), an Optimizer class,
    or an Optimizer instance (returned unchanged)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; known optimizers: {', '.join(names())}")
        return cls()
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise TypeError(f"optimizer must be an optimizer name ({', '.join(names())}) or an Optimizer instance; "
                    f"got {identifier!r}")
