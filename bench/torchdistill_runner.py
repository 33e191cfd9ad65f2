"""torchdistill's knowledge distillation on modelfusion's splits, teachers and student; run by bench/distill.py
inside its own venv (bench/.venv-torchdistill).

    bench/.venv-torchdistill/bin/python bench/torchdistill_runner.py --dataset mnist1d --seed 0 --epochs 150 \
        --teachers t0.safetensors ... --student modelfusion.models:cnn1d --student-kwargs '{...}' --out f.npz

The teacher is the mean of the teachers' probabilities (as log-probabilities), the student is built with the
same seed as ours, and torchdistill's DistillationBox trains it with its KDLoss (the temperature and alpha of
its sample ImageNet KD config: T=1, alpha=0.5) under our optimizer and schedule (AdamW, cosine over every step,
batch 64); the epoch with the best validation NLL is kept, as ours does. Saves the test probabilities.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchdistill.core.interfaces.forward_proc  # noqa: F401  (registers the forward processes by name)
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset
from torchdistill.core.distillation import get_distillation_box

from modelfusion.datasets import load_dataset
from modelfusion.io import load_member
from modelfusion.io.factory import build_model


class MeanTeacher(nn.Module):
    """log of the mean of the teachers' probabilities."""

    def __init__(self, models):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x):
        log_probs = torch.stack([torch.log_softmax(m(x), dim=1) for m in self.models])
        return torch.logsumexp(log_probs, dim=0) - np.log(len(self.models))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--teachers", nargs="+", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--student-kwargs", required=True)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.getLogger("torchdistill").setLevel(logging.WARNING)

    data = load_dataset(args.dataset, seed=args.seed)
    teacher = MeanTeacher([load_member(p).module for p in args.teachers]).eval()
    torch.manual_seed(args.seed)
    student = build_model(args.student, json.loads(args.student_kwargs))
    batch_size = 64
    steps = args.epochs * -(-len(data.train) // batch_size)
    config = {
        "num_epochs": args.epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch_size, "num_workers": 0, "drop_last": False},
        },
        "val_data_loader": {
            "dataset_id": "val",
            "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
            "kwargs": {"batch_size": 1024, "num_workers": 0},
        },
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {
            "forward_proc": "forward_batch_only",
            "adaptations": None,
            "sequential": [],
            "requires_grad": True,
            "frozen_modules": [],
        },
        "optimizer": {"key": "AdamW", "kwargs": {"lr": args.lr, "weight_decay": 1e-4}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": args.temperature,
                                "alpha": args.alpha,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    datasets = {
        "train": TensorDataset(data.train.X, data.train.y),
        "val": TensorDataset(data.val.X, data.val.y),
    }
    started = time.perf_counter()
    box = get_distillation_box(teacher, student, datasets, config, torch.device("cpu"), None, False, 1.0)
    best_nll, best_state = float("inf"), None
    for epoch in range(args.epochs):
        box.pre_epoch_process(epoch=epoch)
        student.train()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
        student.eval()
        with torch.no_grad():
            nll = F.cross_entropy(student(data.val.X), data.val.y).item()
        if nll < best_nll:
            best_nll, best_state = nll, copy.deepcopy(student.state_dict())
    seconds = time.perf_counter() - started
    student.load_state_dict(best_state)
    student.eval()
    with torch.no_grad():
        proba = torch.softmax(student(data.test.X).double(), dim=1).numpy()
    np.savez(args.out, proba=proba, seconds=seconds)


if __name__ == "__main__":
    main()
