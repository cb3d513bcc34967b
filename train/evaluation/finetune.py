"""Whole-network fine-tuning (companion protocol by default): backbone + MLP head D -> 1024 -> 512 -> C with
dropout 0.5, Adam lr 1e-4, weight decay 5e-4, balanced-softmax loss, cosine schedule. The epoch is chosen on
the validation split; the test split is predicted once, by that epoch's weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslfer_core import metrics
from train.evaluation.datasets import LabelledDataset
from train.evaluation.features import make_loader
from train.evaluation.images import Preprocessing, RecordImages
from train.evaluation.linear_probe import class_log_prior, selection_score
from sslfer_core.progress import Progress
from train.evaluation.protocol import Predictions, RunOutcome
from train.evaluation.splits import SplitPlan

SCHEDULES = ("cosine", "constant")


@dataclass
class FinetuneConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    head_dims: tuple[int, ...] = (1024, 512)
    dropout: float = 0.5
    loss: str = "balanced-softmax"
    schedule: str = "cosine"
    augment: bool = True
    workers: int = 0
    select_metric: str = "macro_f1"
    eval_batch_size: int = 256


def build_head(in_dim: int, hidden: tuple[int, ...], dropout: float, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class FinetuneNetwork(nn.Module):
    """Outputs [class logits (C) | valence, arousal (2)], whichever tasks are on."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _Finetuner:
    def __init__(self, backbone, dataset: LabelledDataset, tasks: list[str], preprocessing: Preprocessing,
                 config: FinetuneConfig, device: torch.device, dlib_model_dir: str | None) -> None:
        self.backbone, self.dataset, self.tasks = backbone, dataset, tasks
        self.preprocessing, self.config, self.device = preprocessing, config, device
        self.dlib_model_dir = dlib_model_dir
        self.num_classes = len(dataset.class_names) if "classification" in tasks else 0
        self.labels = torch.from_numpy(dataset.labels())
        self.targets = torch.from_numpy(dataset.regression_targets()).float()
        self.undecodable: set[int] = set()

    def _loader(self, indices: np.ndarray, *, train: bool, seed: int = 0):
        records = [self.dataset.records[i] for i in indices]
        images = RecordImages(records, self.preprocessing, augment=train and self.config.augment,
                              dlib_model_dir=self.dlib_model_dir)
        batch = self.config.batch_size if train else self.config.eval_batch_size
        return make_loader(images, batch, self.config.workers, shuffle=train, seed=seed)

    def _loss(self, outputs, index, ok, offset) -> torch.Tensor | None:
        terms = []
        if self.num_classes:
            labels = self.labels[index].to(self.device)
            use = ok & (labels >= 0)
            if use.any():
                terms.append(F.cross_entropy(outputs[use, :self.num_classes] + offset, labels[use]))
        if "regression" in self.tasks:
            targets = self.targets[index].to(self.device)
            use = ok[:, None] & torch.isfinite(targets)
            if use.any():
                predicted = outputs[:, self.num_classes:self.num_classes + 2]
                terms.append(F.mse_loss(predicted[use], targets[use]))
        return sum(terms) if terms else None

    @torch.no_grad()
    def predict(self, net: nn.Module, indices: np.ndarray) -> Predictions:
        net.eval()
        kept, outputs = [], []
        for images, ok, _, position in self._loader(indices, train=False):
            out = net(images.to(self.device)).float().cpu()
            rows = indices[position.numpy()]
            self.undecodable.update(int(i) for i in rows[~ok.numpy()])
            kept.append(rows[ok.numpy()])
            outputs.append(out[ok])
        kept_indices = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        out = torch.cat(outputs) if outputs else torch.zeros(0, self.num_classes + 2)
        predictions = Predictions(kept_indices)
        if self.num_classes:
            predictions.labels = out[:, :self.num_classes].argmax(dim=1).numpy()
        if "regression" in self.tasks:
            predictions.regression = out[:, self.num_classes:self.num_classes + 2].double().numpy()
        return predictions

    def _val_score(self, predictions: Predictions) -> float:
        if len(predictions.indices) == 0:
            return -math.inf
        if self.num_classes:
            truth = self.dataset.labels()[predictions.indices]
            has = truth >= 0
            return selection_score(self.config.select_metric, truth[has], predictions.labels[has], self.num_classes)
        truth = self.dataset.regression_targets()[predictions.indices]
        cccs = [metrics.concordance_correlation(truth[has, d], predictions.regression[has, d])
                for d in range(2) if (has := np.isfinite(truth[:, d])).any()]
        cccs = [c for c in cccs if not math.isnan(c)]
        return float(np.mean(cccs)) if cccs else -math.inf

    def fit(self, plan: SplitPlan) -> RunOutcome:
        config = self.config
        train, val, test = (plan.indices[s] for s in ("train", "val", "test"))
        torch.manual_seed(plan.seed)
        out_dim = self.num_classes + (2 if "regression" in self.tasks else 0)
        head = build_head(self.backbone.feature_dim, tuple(config.head_dims), config.dropout, out_dim)
        net = FinetuneNetwork(copy.deepcopy(self.backbone.model), head).to(self.device)
        optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        loader = self._loader(train, train=True, seed=plan.seed)
        total_steps = max(1, config.epochs * len(loader))
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
                     if config.schedule == "cosine" else None)
        offset = torch.zeros(self.num_classes, device=self.device)
        if self.num_classes and config.loss == "balanced-softmax":
            train_labels = self.dataset.labels()[train]
            offset = torch.from_numpy(class_log_prior(train_labels[train_labels >= 0], self.num_classes)).float()
            offset = offset.to(self.device)
        best = {"score": -math.inf, "epoch": 0, "state": None}
        history = []
        for epoch in range(1, config.epochs + 1):
            net.train()
            progress = Progress(f"{plan.name} epoch {epoch}/{config.epochs}", len(train))
            losses = []
            for images, ok, _, position in loader:
                index = torch.from_numpy(train[position.numpy()])
                self.undecodable.update(int(i) for i in index[~ok])
                # BatchNorm in train mode cannot normalise one image (its statistics need two); the lone
                # last image of a shuffled epoch is another one each epoch, so none is left out for good.
                loss = None
                if len(position) > 1:
                    outputs = net(images.to(self.device))
                    loss = self._loss(outputs, index, ok.to(self.device), offset)
                if loss is not None:
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(float(loss.detach()))
                if scheduler is not None:
                    scheduler.step()
                progress.advance(len(position))
            progress.close()
            score = self._val_score(self.predict(net, val))
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_score": score})
            if score > best["score"] or best["state"] is None:
                best = {"score": score, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}}
        net.load_state_dict(best["state"])
        val_predictions = self.predict(net, val)
        test_predictions = self.predict(net, test)  # the only look at the test split
        selected = {"epoch": best["epoch"], f"val_{config.select_metric if self.num_classes else 'mean_ccc'}": best["score"]}
        return RunOutcome(selected, val_predictions, test_predictions, {"history": history})


def make_finetune_fit(backbone, dataset: LabelledDataset, tasks: list[str], preprocessing: Preprocessing,
                      config: FinetuneConfig, device: torch.device, dlib_model_dir: str | None = None):
    """fit(plan) for the protocol, plus the finetuner (its .undecodable lists images that failed to load)."""
    finetuner = _Finetuner(backbone, dataset, tasks, preprocessing, config, device, dlib_model_dir)
    return finetuner.fit, finetuner
