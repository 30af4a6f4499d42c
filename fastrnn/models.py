"""Sequential: a stack of layers with Keras' compile / fit / predict / evaluate / summary.

No time loop here: every layer does its own forward and backward (recurrent layers through fastrnn.ops and the
compiled kernels); the model only chains them, applies the loss and steps the optimizer.

    model = fastrnn.Sequential([fastrnn.Input((10, 1)), fastrnn.LSTM(32), fastrnn.Dense(1)])
    model.compile(loss="mse", optimizer="adam")
    history = model.fit(x, y, epochs=20, batch_size=32)
"""
import math
import sys
import time

import numpy as np

from . import _checks, losses as losses_mod, metrics as metrics_mod, optimizers as optimizers_mod
from .layers.base import Layer
from .layers.core import Input


class History:
    """What fit returns: history.history maps 'loss', metric names and their 'val_' versions to per-epoch lists."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


class Sequential:
    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers = []
        self.input_spec = None  # the fastrnn.Input the model starts with, if any
        self.built = False
        self.loss = self.optimizer = None
        self.metrics = []
        self._names = set()
        for layer in layers or []:
            self.add(layer)

    # -- structure -----------------------------------------------------------------------------------------------
    def add(self, layer):
        if isinstance(layer, Input):
            if self.layers or self.input_spec is not None:
                raise ValueError("Input must be the first entry of a Sequential model")
            self.input_spec = layer
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add needs a fastrnn layer or fastrnn.Input; got {type(layer).__name__}")
        if layer.name in self._names:  # Keras: unique names, lstm, lstm_1, ...
            base, k = layer.name, 1
            while f"{base}_{k}" in self._names:
                k += 1
            layer.name = f"{base}_{k}"
        self._names.add(layer.name)
        self.layers.append(layer)
        self.built = False

    def _batch_input_shape(self):
        if self.input_spec is not None:
            return tuple(self.input_spec.batch_input_shape)
        if self.layers and self.layers[0].batch_input_shape is not None:
            return tuple(self.layers[0].batch_input_shape)
        return None

    def build(self, input_shape=None):
        """Build every layer from the input shape (batch entry may be None)."""
        shape = tuple(input_shape) if input_shape is not None else self._batch_input_shape()
        if shape is None:
            raise ValueError("the model needs an input shape: start with fastrnn.Input(shape), give the first "
                             "layer input_shape=..., or call build(input_shape) / the model on data")
        self._output_shapes = []
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
            self._output_shapes.append(shape)
        self.built = True

    @property
    def weights(self):
        return [w for layer in self.layers for w in layer.weights]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        weights = list(weights)
        expected = len(self.weights)
        if len(weights) != expected:
            raise ValueError(f"set_weights needs {expected} arrays for this model; got {len(weights)}")
        k = 0
        for layer in self.layers:
            n = len(layer.weights)
            if n:
                layer.set_weights(weights[k:k + n])
            k += n

    def count_params(self):
        self._require_built("count_params")
        return sum(layer.count_params() for layer in self.layers)

    def reset_states(self):
        for layer in self.layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()

    def _require_built(self, what):
        if not self.built:
            if self._batch_input_shape() is not None:
                self.build()
            else:
                raise ValueError(f"{what} needs a built model: give it an input shape or call it on data first")

    # -- running -------------------------------------------------------------------------------------------------
    def _forward(self, x, training):
        if not self.built:
            self.build((None,) + tuple(np.shape(x)[1:]))
        mask = None
        for layer in self.layers:
            x = layer.forward(x, mask=mask, training=training)
            mask = layer.compute_mask(mask)
        return x, mask

    def _backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:  # e.g. Embedding: its integer input has no gradient
                break

    def __call__(self, x, training=False):
        return self._forward(x, training)[0]

    # -- training ------------------------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='mse'")
        self.optimizer = optimizers_mod.get(optimizer)
        self.loss = losses_mod.get(loss)
        self.metrics = [metrics_mod.get(m, self.loss) for m in (metrics or [])]

    def _require_compiled(self, what):
        if self.loss is None:
            raise ValueError(f"{what} needs a compiled model: call compile(loss=..., optimizer=...) first")

    def _loss_and_gradient(self, y_true, y_pred, mask):
        """Loss over the unmasked entries (Keras weights padded timesteps of a sequence output by 0)."""
        if mask is not None and y_pred.ndim == 3 and mask.shape == y_pred.shape[:2]:
            keep = mask.astype(bool)
            value, g = self.loss.value_and_gradient(np.asarray(y_true)[keep], y_pred[keep])
            grad = np.zeros_like(y_pred)
            grad[keep] = g
            return value, grad
        return self.loss.value_and_gradient(y_true, y_pred)

    def _metric_values(self, y_true, y_pred, mask):
        if mask is not None and y_pred.ndim == 3 and mask.shape == y_pred.shape[:2]:
            keep = mask.astype(bool)
            y_true, y_pred = np.asarray(y_true)[keep], y_pred[keep]
        return {m.name: m(y_true, y_pred) for m in self.metrics}

    def train_on_batch(self, x, y):
        """One optimizer step; returns {'loss': ..., metric: ...} for this batch."""
        self._require_compiled("train_on_batch")
        y_pred, mask = self._forward(x, training=True)
        value, grad = self._loss_and_gradient(y, y_pred, mask)
        self._backward(grad)
        params, grads = [], []
        for layer in self.layers:
            if layer.trainable and layer.weights:
                params.extend(layer.weights)
                grads.extend(layer.grads)
        self.optimizer.apply(params, grads)
        return dict(loss=float(value), **self._metric_values(y, y_pred, mask))

    def fit(self, x, y, batch_size=32, epochs=1, verbose="auto", validation_split=0.0, validation_data=None,
            shuffle=True, seed=None):
        """Train for `epochs` passes over (x, y); returns a History. Keras semantics for the validation split
        (the last fraction of the data, taken before shuffling) and for shuffle (every epoch)."""
        self._require_compiled("fit")
        x, y = self._check_xy(x, y)
        batch_size = _checks.positive_int("batch_size", batch_size)
        epochs = _checks.positive_int("epochs", epochs)
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
        if validation_data is None and validation_split > 0:
            n_val = int(len(x) * validation_split)
            if n_val == 0:
                raise ValueError(f"validation_split={validation_split} leaves no validation sample of {len(x)}")
            validation_data = (x[-n_val:], y[-n_val:])
            x, y = x[:-n_val], y[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a tuple (x_val, y_val)")
        verbose = 1 if verbose == "auto" else int(verbose)
        rng = np.random.default_rng(seed)
        history = History()
        n = len(x)
        steps = math.ceil(n / batch_size)
        for epoch in range(epochs):
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            order = rng.permutation(n) if shuffle else np.arange(n)
            totals, start = {}, time.perf_counter()
            seen = 0
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                logs = self.train_on_batch(x[idx], y[idx])
                seen += len(idx)
                for k, v in logs.items():
                    totals[k] = totals.get(k, 0.0) + v * len(idx)
                if verbose == 1:
                    self._progress(step + 1, steps, {k: v / seen for k, v in totals.items()}, start, final=False)
            logs = {k: v / seen for k, v in totals.items()}
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, verbose=0, return_dict=True)
                logs.update({"val_" + k: v for k, v in val.items()})
            if verbose:
                self._progress(steps, steps, logs, start, final=True)
            history._append(epoch, logs)
        return history

    def predict(self, x, batch_size=32, verbose=0):
        x = self._check_x(x)
        batch_size = _checks.positive_int("batch_size", batch_size)
        outs = [self._forward(x[i:i + batch_size], training=False)[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else self._forward(x, training=False)[0]

    def evaluate(self, x, y, batch_size=32, verbose=1, return_dict=False):
        """Loss (and metrics) over (x, y), averaged per sample as Keras does."""
        self._require_compiled("evaluate")
        x, y = self._check_xy(x, y)
        batch_size = _checks.positive_int("batch_size", batch_size)
        totals, n = {}, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            y_pred, mask = self._forward(xb, training=False)
            value, _ = self._loss_and_gradient(yb, y_pred, mask)
            logs = dict(loss=float(value), **self._metric_values(yb, y_pred, mask))
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + v * len(xb)
            n += len(xb)
        logs = {k: v / max(n, 1) for k, v in totals.items()}
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else [logs["loss"]] + [logs[m.name] for m in self.metrics]

    @staticmethod
    def _progress(step, steps, logs, start, final):
        width = 20
        done = int(width * step / steps)
        elapsed = time.perf_counter() - start
        bar = "━" * done + ("━" if done < width else "") + " " * max(width - done - 1, 0)
        text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        line = f"{step}/{steps} {bar[:width]} {elapsed:.0f}s {elapsed / step * 1e3:.0f}ms/step - {text}"
        end = "\n" if final else ""
        if final or sys.stdout.isatty():
            print("\r" + line, end=end, flush=True)

    def _check_x(self, x):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array; got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"x must have a batch axis; got shape {x.shape}")
        return x

    def _check_xy(self, x, y):
        x = self._check_x(x)
        y = np.asarray(y)
        if y.ndim < 1 or len(y) != len(x):
            raise ValueError(f"x and y must have the same number of samples; got x {x.shape} and y {y.shape}")
        return x, y

    # -- saving --------------------------------------------------------------------------------------------------
    def save_weights(self, path):
        """Every weight, in get_weights() order, to a .npz file."""
        self._require_built("save_weights")
        np.savez(path, *self.get_weights())

    def load_weights(self, path):
        self._require_built("load_weights")
        with np.load(path) as data:
            self.set_weights([data[f"arr_{k}"] for k in range(len(data.files))])

    # -- summary -------------------------------------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Keras' table: Layer (type) / Output Shape / Param #, then the totals."""
        self._require_built("summary")
        rows = [(f"{layer.name} ({type(layer).__name__})", str(shape), f"{layer.count_params():,}")
                for layer, shape in zip(self.layers, self._output_shapes)]
        w = [max(31, *(len(r[0]) + 1 for r in rows)), max(22, *(len(r[1]) + 1 for r in rows)), 13]
        total = self.count_params()
        trainable = sum(layer.count_params() for layer in self.layers if layer.trainable)
        itemsize = max((wt.itemsize for wt in self.weights), default=4)
        lines = [f'Model: "{self.name}"',
                 "┏" + "┳".join("━" * (n + 2) for n in w) + "┓",
                 "┃ " + " ┃ ".join([("Layer (type)").ljust(w[0]), "Output Shape".ljust(w[1]),
                                     "Param #".rjust(w[2])]) + " ┃",
                 "┡" + "╇".join("━" * (n + 2) for n in w) + "┩"]
        for k, (a, b, c) in enumerate(rows):
            lines.append("│ " + " │ ".join([a.ljust(w[0]), b.ljust(w[1]), c.rjust(w[2])]) + " │")
            if k < len(rows) - 1:
                lines.append("├" + "┼".join("─" * (n + 2) for n in w) + "┤")
        lines.append("└" + "┴".join("─" * (n + 2) for n in w) + "┘")
        lines += [f" Total params: {total:,} ({_size(total * itemsize)})",
                  f" Trainable params: {trainable:,} ({_size(trainable * itemsize)})",
                  f" Non-trainable params: {total - trainable:,} ({_size((total - trainable) * itemsize)})"]
        for line in lines:
            print_fn(line)


def _size(nbytes):
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.2f} B"
