"""Next-number prediction, many-to-one: [10, 20, 30] -> 40.

The classic first LSTM tutorial: a window of three numbers from an arithmetic sequence goes in, the number that
comes next comes out. One LSTM layer reads the window, a Dense layer regresses the answer; mean squared error and
Adam. Numbers are divided by 100 for the network (so that the tanh units work in their useful range) and multiplied
back for reporting.

Stated quality (seed 0, default arguments, about a second): mean absolute error below 1.0 on 256 unseen windows of
numbers between 0 and 110 (steps 1 to 10), and [70, 80, 90] -> 100 within 1.5.

    python examples/next_number.py
"""
import numpy as np

import fastrnn

SCALE = 100.0


def make_windows(n, rng):
    """n windows [a, a+d, a+2d] -> a+3d with a in [0, 80], d in [1, 10]; shapes (n, 3, 1) and (n, 1)."""
    start = rng.uniform(0, 80, size=(n, 1))
    step = rng.uniform(1, 10, size=(n, 1))
    seq = start + step * np.arange(4)
    return seq[:, :3, None] / SCALE, seq[:, 3:] / SCALE


def build_model(seed=0):
    model = fastrnn.Sequential([
        fastrnn.Input((3, 1)),                 # 3 timesteps, 1 feature
        fastrnn.LSTM(32, seed=seed),
        fastrnn.Dense(1, seed=seed + 1),
    ])
    model.compile(loss="mse", optimizer=fastrnn.optimizers.Adam(learning_rate=0.01))
    return model


def main(epochs=40, seed=0, verbose=1, n_train=1024):
    rng = np.random.default_rng(seed)
    x_train, y_train = make_windows(n_train, rng)
    x_test, y_test = make_windows(256, rng)

    model = build_model(seed)
    if verbose:
        model.summary()
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=0.1, seed=seed, verbose=verbose)

    test_mae = float(np.mean(np.abs(model.predict(x_test) - y_test)) * SCALE)
    guess = float(model.predict(np.array([[[70.0], [80.0], [90.0]]]) / SCALE)[0, 0] * SCALE)
    if verbose:
        print(f"test MAE: {test_mae:.3f}   [70, 80, 90] -> {guess:.2f}")
    return {"test_mae": test_mae, "next_after_70_80_90": guess, "backend": model.layers[0].backend_used}


if __name__ == "__main__":
    print(main())
