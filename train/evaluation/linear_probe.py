"""Linear heads on cached frozen features: multinomial logistic regression (classes) and ridge (valence/arousal).

Both standardise features with train statistics, pick their regulariser (and for logistic regression the
iteration count) on the validation split only, and return a head that is applied to the test split once.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslfer_core import metrics
from sslfer_core.atomic_files import atomic_path, write_through
from train.evaluation.datasets import LabelledDataset
from train.evaluation.protocol import Predictions, RunOutcome
from train.evaluation.results import output_write
from train.evaluation.splits import SplitPlan

SELECT_METRICS = ("macro_f1", "accuracy", "uar")
# Below this many feature values per pass, extra threads only add synchronisation cost (docs/evaluation.md,
# "Threads of the linear probe").
SINGLE_THREAD_BELOW = 20_000_000
LOSSES = ("ce", "balanced-softmax")


@dataclass
class LinearProbeConfig:
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
    max_iterations: int = 300  # L-BFGS iterations per weight decay
    eval_every: int = 10  # validation check interval (iterations); the best checkpoint is kept
    loss: str = "ce"
    select_metric: str = "macro_f1"
    ridge_alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class Standardiser:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        x = x.astype(np.float64)
        return cls(x.mean(axis=0), x.std(axis=0) + 1e-6)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def class_log_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)  # a class missing from train must not give log(0)
    return np.log(counts / counts.sum())


@contextlib.contextmanager
def threads_for(size: int):
    previous = torch.get_num_threads()
    if size < SINGLE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def selection_score(name: str, y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    if name == "accuracy":
        return metrics.accuracy(y_true, y_pred)
    if name == "uar":
        return metrics.unweighted_average_recall(y_true, y_pred, num_classes)
    return metrics.macro_f1(y_true, y_pred, num_classes)


@dataclass
class LinearClassifier:
    weight: np.ndarray  # (C, D) on standardised features
    bias: np.ndarray  # (C,)
    standardiser: Standardiser
    selected: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.standardiser(x) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)


def _train_logistic(x: torch.Tensor, y: torch.Tensor, logit_offset: torch.Tensor, weight_decay: float,
                    config: LinearProbeConfig, on_checkpoint) -> None:
    num_classes = logit_offset.numel()
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=config.eval_every, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias + logit_offset, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    for round_index in range(max(1, config.max_iterations // config.eval_every)):
        optimiser.step(closure)
        on_checkpoint((round_index + 1) * config.eval_every, weight.detach(), bias.detach())


def fit_classifier(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   num_classes: int, config: LinearProbeConfig) -> LinearClassifier:
    """Logistic regression; weight decay and iteration count chosen by the validation metric."""
    standardiser = Standardiser.fit(train_x)
    x = torch.from_numpy(standardiser(train_x))
    val = torch.from_numpy(standardiser(val_x))
    y = torch.from_numpy(train_y.astype(np.int64))
    offset = torch.zeros(num_classes)
    if config.loss == "balanced-softmax":  # train with log-prior-shifted logits, predict with plain ones
        offset = torch.from_numpy(class_log_prior(train_y, num_classes)).float()
    best: dict = {"score": -math.inf}

    for weight_decay in config.weight_decays:
        def on_checkpoint(iterations, weight, bias, weight_decay=weight_decay):
            predicted = (val @ weight.T + bias).argmax(dim=1).numpy()
            score = selection_score(config.select_metric, val_y, predicted, num_classes)
            if score > best["score"]:
                best.update(score=score, weight=weight.clone(), bias=bias.clone(), weight_decay=weight_decay,
                            iterations=iterations)

        with threads_for(x.numel()):
            _train_logistic(x, y, offset, weight_decay, config, on_checkpoint)
    selected = {"weight_decay": best["weight_decay"], "iterations": best["iterations"],
                f"val_{config.select_metric}": best["score"], "loss": config.loss}
    return LinearClassifier(best["weight"].numpy(), best["bias"].numpy(), standardiser, selected)


@dataclass
class RidgeRegressor:
    weight: np.ndarray  # (2, D) on standardised features
    bias: np.ndarray  # (2,)
    standardiser: Standardiser
    selected: dict = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.standardiser(x).astype(np.float64) @ self.weight.T + self.bias


def fit_regressor(train_x: np.ndarray, train_t: np.ndarray, val_x: np.ndarray, val_t: np.ndarray,
                  config: LinearProbeConfig) -> RidgeRegressor:
    """Ridge per dimension (valence, arousal) on rows where that target exists; alpha chosen by validation CCC."""
    standardiser = Standardiser.fit(train_x)
    x, val = standardiser(train_x).astype(np.float64), standardiser(val_x).astype(np.float64)
    dims = train_t.shape[1]
    weight, bias = np.zeros((dims, x.shape[1])), np.zeros(dims)
    selected: dict = {}
    for d, name in enumerate(metrics.REGRESSION_DIMENSIONS[:dims]):
        rows, val_rows = np.isfinite(train_t[:, d]), np.isfinite(val_t[:, d])
        if not rows.any() or not val_rows.any():
            weight[d], bias[d] = 0.0, float(np.nanmean(train_t[:, d])) if rows.any() else 0.0
            continue
        xd, td = x[rows], train_t[rows, d]
        centre_x, centre_t = xd.mean(axis=0), td.mean()
        xc = xd - centre_x
        # One eigendecomposition of the Gram matrix serves every alpha.
        eigenvalues, eigenvectors = np.linalg.eigh(xc.T @ xc / len(xc))
        projected = eigenvectors.T @ (xc.T @ (td - centre_t) / len(xc))
        best = (-math.inf, None, None)
        for alpha in config.ridge_alphas:
            w = eigenvectors @ (projected / (eigenvalues + alpha))
            b = centre_t - centre_x @ w
            score = metrics.concordance_correlation(val_t[val_rows, d], val[val_rows] @ w + b)
            score = -math.inf if math.isnan(score) else score
            if best[1] is None or score > best[0]:
                best = (score, alpha, (w, b))
        weight[d], bias[d] = best[2]
        selected[f"ridge_alpha_{name}"] = best[1]
        selected[f"val_ccc_{name}"] = best[0]
    return RidgeRegressor(weight, bias, standardiser, selected)


def save_head(path: Path, classifier: LinearClassifier, class_names: list[str], backbone_sha256: str,
              image_size: int) -> None:
    """The classifier as plain tensors/strings (loadable with weights_only=True), e.g. for Grad-CAM targets."""
    head = {"weight": torch.from_numpy(classifier.weight.astype(np.float32)),
            "bias": torch.from_numpy(classifier.bias.astype(np.float32)),
            "mean": torch.from_numpy(classifier.standardiser.mean.astype(np.float32)),
            "std": torch.from_numpy(classifier.standardiser.std.astype(np.float32)),
            "class_names": list(class_names), "backbone_sha256": backbone_sha256, "image_size": int(image_size)}
    with output_write(path), atomic_path(path) as tmp:
        write_through(tmp, lambda handle: torch.save(head, handle))  # a full disk: OSError, not torch's text


def make_linear_fit(dataset: LabelledDataset, features: np.ndarray, tasks: list[str], config: LinearProbeConfig,
                    heads_dir: Path | None = None, backbone_sha256: str = "", image_size: int = 0):
    """fit(plan) for the protocol: heads trained on train features, selected on val, applied to test once."""
    labels, targets = dataset.labels(), dataset.regression_targets()
    num_classes = len(dataset.class_names)

    def fit(plan: SplitPlan) -> RunOutcome:
        train, val, test = (plan.indices[s] for s in ("train", "val", "test"))
        val_predictions, test_predictions = Predictions(val), Predictions(test)
        selected, extra = {}, {}
        if "classification" in tasks:
            tr, va = train[labels[train] >= 0], val[labels[val] >= 0]
            classifier = fit_classifier(features[tr], labels[tr], features[va], labels[va], num_classes, config)
            val_predictions.labels = classifier.predict(features[val])
            test_predictions.labels = classifier.predict(features[test])
            selected.update(classifier.selected)
            if heads_dir is not None:
                path = Path(heads_dir) / f"{plan.name}.pt"
                save_head(path, classifier, dataset.class_names, backbone_sha256, image_size)
                extra["head_file"] = str(path)
        if "regression" in tasks:
            regressor = fit_regressor(features[train], targets[train], features[val], targets[val], config)
            val_predictions.regression = regressor.predict(features[val])
            test_predictions.regression = regressor.predict(features[test])
            selected.update(regressor.selected)
        return RunOutcome(selected, val_predictions, test_predictions, extra)

    return fit
