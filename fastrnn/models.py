"""Sequential: a stack of layers with Keras' compile / fit / predict / evaluate / summary.

No time loop here: every layer does its own forward and backward (recurrent layers through fastrnn.ops and the
compiled kernels); the model only chains them, applies the loss and steps the optimizer.

    model = fastrnn.Sequential([fastrnn.Input((10, 1)), fastrnn.LSTM(32), fastrnn.Dense(1)])
    model.compile(loss="mse", optimizer="adam")
    history = model.fit(x, y, epochs=20, batch_size=32)
"""
import math
import numbers
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
        self.params = {}  # verbose, epochs, steps (as Keras' History)

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
            shape = layer.compute_output_shape(shape)
            if isinstance(shape, list):  # return_state=True, or Bidirectional(merge_mode=None)
                raise ValueError(f"a Sequential model needs layers with a single output; {layer.name} returns "
                                 f"{len(shape)} arrays {shape} (return_state=True or merge_mode=None): call it "
                                 "directly instead")
            shape = tuple(shape)
            self._output_shapes.append(shape)
        self.built = True

    @property
    def weights(self):
        """The live parameter arrays of every layer, in order (a model with an input shape builds first)."""
        if not self.built and self._batch_input_shape() is not None:
            self.build()
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
        """Zero the states of every stateful layer (Keras; the other layers keep no state between calls)."""
        for layer in self.layers:
            if getattr(layer, "stateful", False):
                layer.reset_states()

    reset_state = reset_states  # Keras 3 name

    def freeze(self):
        """Freeze every recurrent layer for inference (RecurrentLayer.freeze: read-only weights, W and R packed
        once); fit / train_on_batch raise until unfreeze(). Returns the model."""
        self._require_built("freeze")
        for layer in self.layers:
            if hasattr(layer, "freeze"):
                layer.freeze()
        return self

    def unfreeze(self):
        for layer in self.layers:
            if hasattr(layer, "unfreeze"):
                layer.unfreeze()
        return self

    def _require_built(self, what):
        if not self.built:
            if self._batch_input_shape() is not None:
                self.build()
            else:
                raise ValueError(f"{what} needs a built model: give it an input shape or call it on data first")

    # -- running -------------------------------------------------------------------------------------------------
    def _forward(self, x, training):
        if not self.built:
            self.build(self._batch_input_shape() or (None,) + tuple(np.shape(x)[1:]))
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
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a list, e.g. metrics=['accuracy']; got {metrics!r}")
        optimizer = optimizers_mod.get(optimizer)
        loss = losses_mod.get(loss)
        metrics = [metrics_mod.get(m, loss) for m in (metrics or [])]
        names = ["loss"] + [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique and differ from 'loss'; got {names}")
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics

    def _require_compiled(self, what):
        if self.loss is None:
            raise ValueError(f"{what} needs a compiled model: call compile(loss=..., optimizer=...) first")

    @staticmethod
    def _keep(y_pred, mask):
        """The (batch, timesteps) boolean mask of a sequence output, or None when nothing is masked out."""
        if mask is None or isinstance(mask, (list, tuple)) or y_pred.ndim != 3:
            return None
        mask = np.asarray(mask)
        return mask.astype(bool) if mask.shape == y_pred.shape[:2] else None

    def _loss_and_gradient(self, y_true, y_pred, mask):
        """Loss over the unmasked entries (Keras: padded timesteps of a sequence output have weight 0 and the loss
        is the mean over the valid ones)."""
        keep = self._keep(y_pred, mask)
        if keep is None:
            return self.loss.value_and_gradient(y_true, y_pred)
        y_true = np.asarray(y_true)
        if y_true.shape[:2] != y_pred.shape[:2]:
            raise ValueError(f"y must have one target per timestep of the output {y_pred.shape}: shape "
                             f"{y_pred.shape[:2]} + ...; got y of shape {y_true.shape}")
        grad = np.zeros_like(y_pred)
        if not keep.any():  # every step padded: nothing to learn from this batch
            return 0.0, grad
        value, g = self.loss.value_and_gradient(y_true[keep], y_pred[keep])
        grad[keep] = g
        return value, grad

    def _metric_values(self, y_true, y_pred, mask):
        """{name: (value, weight)}: the weight is the number of samples, or of valid timesteps under a mask
        (Keras' metrics average over valid entries across a whole epoch)."""
        keep = self._keep(y_pred, mask)
        weight = len(y_pred)
        if keep is not None:
            weight = int(keep.sum())
            if weight == 0:
                return {m.name: (0.0, 0) for m in self.metrics}
            y_true, y_pred = np.asarray(y_true)[keep], y_pred[keep]
        return {m.name: (float(m(y_true, y_pred)), weight) for m in self.metrics}

    def _batch_logs(self, x, y, training):
        """One batch: {name: (value, weight)} for the loss (weighted by batch size, as Keras) and the metrics."""
        y_pred, mask = self._forward(x, training=training)
        value, grad = self._loss_and_gradient(y, y_pred, mask)
        if training:
            self._backward(grad)
            params, grads = [], []
            for layer in self.layers:
                if layer.trainable and layer.weights:
                    params.extend(layer.weights)
                    grads.extend(layer.grads)
            self.optimizer.apply(params, grads)
        return dict(loss=(float(value), len(y_pred)), **self._metric_values(y, y_pred, mask))

    def _result(self, logs, return_dict):
        """Keras' return convention: a dict, the scalar loss without metrics, else [loss, metrics...]."""
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else [logs["loss"]] + [logs[m.name] for m in self.metrics]

    def train_on_batch(self, x, y, return_dict=False):
        """One optimizer step on (x, y). Returns the loss (a float), [loss, metrics...] if the model has metrics,
        or {'loss': ..., metric: ...} with return_dict=True (values before the step, as Keras reports them)."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y)
        logs = {k: v for k, (v, _) in self._batch_logs(x, y, training=True).items()}
        return self._result(logs, return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        """Loss (and metrics) on one batch, without training; returns like train_on_batch."""
        self._require_compiled("test_on_batch")
        x, y = self._check_xy(x, y)
        logs = {k: v for k, (v, _) in self._batch_logs(x, y, training=False).items()}
        return self._result(logs, return_dict)

    def predict_on_batch(self, x):
        return self._forward(self._check_x(x), training=False)[0]

    def fit(self, x, y, batch_size=None, epochs=1, verbose="auto", validation_split=0.0, validation_data=None,
            shuffle=True, seed=None):
        """Train for `epochs` passes over (x, y); returns a History.

        Keras semantics: batch_size None means 32; validation_split takes the last fraction of the samples before
        shuffling (ignored when validation_data is given); shuffle=True reorders the training samples every epoch
        (from `seed`, for reproducible runs); verbose 0 silent, 1 a progress bar, 2 one line per epoch. The logged
        loss and metrics are epoch averages of the per-batch values, followed by 'val_...' ones."""
        self._require_compiled("fit")
        x, y = self._check_xy(x, y)
        batch_size = 32 if batch_size is None else _checks.positive_int("batch_size", batch_size)
        epochs = _checks.positive_int("epochs", epochs)
        shuffle = _checks.boolean("shuffle", shuffle)
        if isinstance(validation_split, (bool, np.bool_)) or not isinstance(validation_split, numbers.Real):
            raise TypeError(f"validation_split must be a number in [0, 1); got {validation_split!r}")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a tuple (x_val, y_val)")
            validation_data = self._check_xy(*validation_data, what="validation_data")
        elif validation_split > 0:
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))  # keras.utils.split_dataset's rule
            if split_at == 0 or split_at == len(x):
                raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves no "
                                 f"{'training' if split_at == 0 else 'validation'} sample")
            validation_data = (x[split_at:], y[split_at:])
            x, y = x[:split_at], y[:split_at]
        if verbose == "auto":
            verbose = 1
        if isinstance(verbose, str) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}")
        verbose = int(verbose)
        rng = np.random.default_rng(seed)
        n = len(x)
        steps = math.ceil(n / batch_size)
        history = History()
        history.params = {"verbose": verbose, "epochs": epochs, "steps": steps}
        for epoch in range(epochs):
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            order = rng.permutation(n) if shuffle else np.arange(n)
            totals, start = {}, time.perf_counter()
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                for k, (v, w) in self._batch_logs(x[idx], y[idx], training=True).items():
                    t = totals.setdefault(k, [0.0, 0])
                    t[0] += v * w
                    t[1] += w
                if verbose == 1 and step + 1 < steps:
                    self._progress(step + 1, steps, _averages(totals), start, final=False, bar=True)
            logs = _averages(totals)
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, verbose=0, return_dict=True)
                logs.update({"val_" + k: v for k, v in val.items()})
            if verbose:
                self._progress(steps, steps, logs, start, final=True, bar=verbose == 1)
            history._append(epoch, logs)
        return history

    def predict(self, x, batch_size=None, verbose=0):
        """The model's output for x, computed batch by batch (batch_size None means 32), in inference mode."""
        x = self._check_x(x)
        batch_size = 32 if batch_size is None else _checks.positive_int("batch_size", batch_size)
        outs = [self._forward(x[i:i + batch_size], training=False)[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else self._forward(x, training=False)[0]

    def evaluate(self, x, y, batch_size=None, verbose="auto", return_dict=False):
        """Loss (and metrics) over (x, y): the loss is averaged per sample and the metrics per valid entry, as
        Keras does. Returns the loss, [loss, metrics...] with metrics, or a dict with return_dict=True."""
        self._require_compiled("evaluate")
        x, y = self._check_xy(x, y)
        batch_size = 32 if batch_size is None else _checks.positive_int("batch_size", batch_size)
        totals = {}
        for i in range(0, len(x), batch_size):
            for k, (v, w) in self._batch_logs(x[i:i + batch_size], y[i:i + batch_size], training=False).items():
                t = totals.setdefault(k, [0.0, 0])
                t[0] += v * w
                t[1] += w
        logs = _averages(totals)
        if verbose:
            print(" - ".join(f"{k}: {_fmt(v)}" for k, v in logs.items()))
        return self._result(logs, return_dict)

    @staticmethod
    def _progress(step, steps, logs, start, final, bar=True):
        """Keras' progress line: `7/10 ━━━━━━━━━━━━━━──────── 1s 12ms/step - loss: 0.1234`; redrawn in place on a
        terminal (elsewhere only the final line of an epoch is printed). bar=False is verbose=2's line."""
        width = 20
        done = width * step // steps
        elapsed = time.perf_counter() - start
        per_step = elapsed / step
        if per_step >= 1:
            rate = f"{per_step:.0f}s/step"
        elif per_step >= 1e-3:
            rate = f"{per_step * 1e3:.0f}ms/step"
        else:
            rate = f"{per_step * 1e6:.0f}us/step"
        text = "".join(f" - {k}: {_fmt(v)}" for k, v in logs.items())
        if bar:
            line = f"{step}/{steps} {'━' * done}{'─' * (width - done)} {elapsed:.0f}s {rate}{text}"
        else:
            line = f"{step}/{steps} - {elapsed:.0f}s - {rate}{text}"
        if final:
            print("\r" + line if sys.stdout.isatty() else line, flush=True)
        elif sys.stdout.isatty():
            print("\r" + line, end="", flush=True)

    def _check_x(self, x, what="x"):
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError as exc:
                raise ValueError(f"{what} must be a rectangular array; {exc}") from None
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{what} must be a numpy array; got {type(x).__name__}")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be a real numeric array; got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{what} must have a batch axis; got shape {x.shape}")
        return x

    def _check_xy(self, x, y, what=None):
        x = self._check_x(x, f"{what} x" if what else "x")
        if len(x) == 0:
            raise ValueError(f"{what + ' x' if what else 'x'} has no samples (shape {x.shape})")
        y = self._check_x(y, f"{what} y" if what else "y")
        if len(y) != len(x):
            raise ValueError(f"{what + ': ' if what else ''}x and y must have the same number of samples; got "
                             f"x {x.shape} and y {y.shape}")
        return x, y

    # -- saving --------------------------------------------------------------------------------------------------
    def save_weights(self, path):
        """Every weight, in get_weights() order, to `path` (numpy .npz format, whatever the file name)."""
        self._require_built("save_weights")
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, *self.get_weights())

    def load_weights(self, path):
        """Weights written by save_weights, checked against this model's shapes (a ValueError names a mismatch)."""
        self._require_built("load_weights")
        with np.load(path) as data:
            self.set_weights([data[f"arr_{k}"] for k in range(len(data.files))])

    # -- summary -------------------------------------------------------------------------------------------------
    def _optimizer_variables(self):
        """What Keras 3 counts as the optimizer's variables once it has run: its iteration counter (int64), its
        learning rate (float32) and every slot (momenta, velocities, ...). [] before the first update."""
        opt = self.optimizer
        if opt is None or opt.iterations == 0:
            return []
        slots = [a for w in self.weights for a in opt.get_slots(w).values()]
        return [np.zeros((), np.int64), np.zeros((), np.float32)] + slots

    def summary(self, print_fn=print):
        """Keras 3's table: Layer (type) / Output Shape / Param #, then the totals (with, once the model has been
        trained, the optimizer's variables, which Keras adds to the total)."""
        self._require_built("summary")
        rows = [(f"{layer.name} ({type(layer).__name__})", str(shape), f"{layer.count_params():,}")
                for layer, shape in zip(self.layers, self._output_shapes)]
        w = [max(31, *(len(r[0]) + 1 for r in rows)), max(22, *(len(r[1]) + 1 for r in rows)), 13]
        trainable = [wt for layer in self.layers if layer.trainable for wt in layer.weights]
        frozen = [wt for layer in self.layers if not layer.trainable for wt in layer.weights]
        opt_vars = self._optimizer_variables()

        def count(ws):
            return sum(int(a.size) for a in ws)

        def nbytes(ws):
            return sum(int(a.nbytes) for a in ws)

        total = count(trainable) + count(frozen) + count(opt_vars)
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
        lines += [f" Total params: {total:,} ({_size(nbytes(trainable) + nbytes(frozen) + nbytes(opt_vars))})",
                  f" Trainable params: {count(trainable):,} ({_size(nbytes(trainable))})",
                  f" Non-trainable params: {count(frozen):,} ({_size(nbytes(frozen))})"]
        if opt_vars:
            lines.append(f" Optimizer params: {count(opt_vars):,} ({_size(nbytes(opt_vars))})")
        for line in lines:
            print_fn(line)


def _fmt(value):
    """A logged number as Keras' progress bar prints it."""
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def _averages(totals):
    return {k: (v / w if w else 0.0) for k, (v, w) in totals.items()}


def _size(nbytes):
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.2f} B"
