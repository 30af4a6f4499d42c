"""fastrnn.metrics: small cases for every metric, Keras 3's choice of accuracy, lookup and bad input."""
import numpy as np
import pytest

from fastrnn import losses, metrics
from fastrnn.metrics import (AutoAccuracy, BinaryAccuracy, CategoricalAccuracy, MeanAbsoluteError, MeanSquaredError,
                             SparseCategoricalAccuracy)


def test_binary_accuracy():
    m = BinaryAccuracy()
    assert m.name == "binary_accuracy"
    # Keras' docstring example: 0.75; the threshold is strict (0.5 counts as 0)
    assert m([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]]) == 0.75
    assert m([1, 0], [0.5, 0.5]) == 0.5
    assert m([1, 0, 1], [[0.7], [0.2], [0.1]]) == pytest.approx(2 / 3)      # (B,) against (B, 1)
    assert BinaryAccuracy(threshold=0.8)([1, 1], [0.7, 0.9]) == 0.5
    # multi-label / sequences: the mean over every entry
    assert m(np.array([[[1, 0], [0, 0]]]), np.array([[[0.9, 0.9], [0.1, 0.2]]])) == 0.75


def test_categorical_accuracy():
    m = CategoricalAccuracy()
    assert m([[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]]) == 0.5   # Keras' docstring example
    y_true = np.eye(3)[[[0, 1], [2, 2]]]                                        # (B=2, T=2, C=3)
    y_pred = np.eye(3)[[[0, 2], [2, 2]]] + 0.1
    assert m(y_true, y_pred) == 0.75


def test_sparse_categorical_accuracy():
    m = SparseCategoricalAccuracy()
    assert m([[2], [1]], [[0.1, 0.6, 0.3], [0.05, 0.95, 0]]) == 0.5              # Keras' docstring example
    assert m([2, 1], [[0.1, 0.6, 0.3], [0.05, 0.95, 0]]) == 0.5
    assert m([2.0, 1.0], [[0.1, 0.2, 0.7], [0.05, 0.95, 0]]) == 1.0              # float ids compare by value
    labels = np.array([[0, 1, 2], [2, 2, 0]])                                    # (B=2, T=3)
    logits = np.eye(3)[[[0, 1, 1], [2, 0, 0]]] * 5 - 1                           # argmax ids [[0,1,1],[2,0,0]]
    assert m(labels, logits) == pytest.approx(4 / 6)
    assert m(labels[..., None], logits) == pytest.approx(4 / 6)


def test_mae_mse():
    t, p = [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]
    assert MeanAbsoluteError()(t, p) == 0.5 and MeanSquaredError()(t, p) == 0.5
    assert MeanSquaredError()([1.0, 2.0], [[2.0], [4.0]]) == 2.5
    assert MeanAbsoluteError()(np.zeros((2, 3, 4)), np.full((2, 3, 4), -2.0, np.float32)) == 2.0


@pytest.mark.parametrize("y_true, y_pred, kind", [
    (np.array([[1], [0]]), np.array([[0.8], [0.3]]), BinaryAccuracy),           # last axis 1 -> binary
    (np.array([1, 0]), np.array([[0.8], [0.3]]), BinaryAccuracy),
    (np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), SparseCategoricalAccuracy),   # fewer axes
    (np.array([[2], [0]]), np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), SparseCategoricalAccuracy),  # (B, 1)
    (np.eye(3)[[2, 0]], np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), CategoricalAccuracy),
    (np.array([[2, 0]]), np.array([[[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]]), SparseCategoricalAccuracy),  # sequences
    (np.array([[[1], [0]]]), np.array([[[0.9], [0.6]]]), BinaryAccuracy),
], ids=["binary", "binary-1d", "sparse", "sparse-col", "categorical", "sparse-seq", "binary-seq"])
def test_accuracy_is_chosen_from_shapes_like_keras(y_true, y_pred, kind):
    m = metrics.get("accuracy", "sparse_categorical_crossentropy")
    assert isinstance(m, AutoAccuracy) and m.name == "accuracy" and m.resolved is None
    value = m(y_true, y_pred)
    assert type(m.resolved) is kind and m.resolved.name == "accuracy"
    assert value == kind()(y_true, y_pred)
    assert m(y_true, y_pred) == value                                           # keeps its choice


def test_accuracy_records_the_loss_and_keeps_keras_choice():
    loss = losses.BinaryCrossentropy()
    m = metrics.get("acc", loss)
    assert m.name == "acc" and m.loss is loss
    # Keras 3 decides from shapes alone: multi-label outputs (B, C > 1) get categorical accuracy
    m(np.array([[1, 0, 1]]), np.array([[0.9, 0.2, 0.3]]))
    assert type(m.resolved) is CategoricalAccuracy
    # a first call that fails does not fix the choice
    m = metrics.get("accuracy")
    with pytest.raises(ValueError):
        m(np.zeros((2, 4)), np.zeros((2, 3)))
    assert m.resolved is None


def test_get():
    for name, cls in [("binary_accuracy", BinaryAccuracy), ("categorical_accuracy", CategoricalAccuracy),
                      ("sparse_categorical_accuracy", SparseCategoricalAccuracy), ("mae", MeanAbsoluteError),
                      ("mean_absolute_error", MeanAbsoluteError), ("mse", MeanSquaredError),
                      ("MSE", MeanSquaredError), ("mean_squared_error", MeanSquaredError)]:
        m = metrics.get(name)
        assert type(m) is cls and m.name == name                               # named as asked, like Keras logs
    inst = BinaryAccuracy(threshold=0.3, name="acc30")
    assert metrics.get(inst) is inst and inst.name == "acc30"
    assert type(metrics.get(MeanSquaredError)) is MeanSquaredError

    def max_error(y_true, y_pred):
        return np.max(np.abs(np.asarray(y_true) - np.asarray(y_pred)))
    fm = metrics.get(max_error)
    assert fm.name == "max_error" and fm([0.0, 1.0], [0.5, 3.0]) == 2.0
    with pytest.raises(ValueError, match="unknown metric 'f1'; known metrics: acc, accuracy, binary_accuracy"):
        metrics.get("f1")
    with pytest.raises(TypeError, match="metric must be"):
        metrics.get(3)


def test_bad_input():
    with pytest.raises(ValueError, match=r"y_true and y_pred must have the same shape.*y_true shape \(3,\) and "
                                         r"y_pred shape \(2,\)"):
        BinaryAccuracy()([1, 0, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"use sparse_categorical_accuracy"):
        CategoricalAccuracy()([0, 2], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"one class id per row.*got y_true shape \(2, 3\)"):
        SparseCategoricalAccuracy()(np.eye(3)[:2], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="y_pred must not be empty"):
        MeanSquaredError()(np.zeros((0, 1)), np.zeros((0, 1)))
    with pytest.raises(TypeError, match="y_true"):
        MeanAbsoluteError()(["a"], [1.0])
    with pytest.raises(ValueError, match="threshold"):
        BinaryAccuracy(threshold=1.0)
    with pytest.raises(TypeError, match="threshold"):
        BinaryAccuracy(threshold="0.5")
    with pytest.raises(TypeError, match="name"):
        MeanSquaredError(name="")
