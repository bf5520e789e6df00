"""A small CNN on 8x8 digits in PyTorch, for FedAvg or FedProx."""

import os
from collections import OrderedDict

import numpy as np
import torch
from data_manager import DataManager
from torch import nn

from flops.ml_repo import ModelManagerTemplate

NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
BATCH_SIZE = 32
SEED = 0


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one pooling step, two dense layers (about 40k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 x 4 x 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def pick_device() -> torch.device:
    """FLOPS_DEVICE ("cuda" or "cpu") when set, else a GPU when there is one."""
    requested = os.environ.get("FLOPS_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelManager(ModelManagerTemplate):
    # Tells FLOps that fit_model() adds the FedProx term itself when given `proximal_mu`.
    handles_proximal_term = True

    def __init__(self) -> None:
        self.device = pick_device()
        # The same initial weights on the aggregator and every node, without touching the
        # caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            self.model = DigitsCNN().to(self.device)
        self.train: tuple[np.ndarray, np.ndarray] | None = None
        self.test: tuple[np.ndarray, np.ndarray] | None = None

    def set_model_data(self) -> None:
        self.train, self.test = DataManager().get_data()

    def get_model(self) -> nn.Module:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [value.detach().cpu().numpy() for value in self.model.state_dict().values()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        keys = self.model.state_dict().keys()
        # load_state_dict copies into the existing tensors, casting to their dtype and device.
        state = OrderedDict(
            (key, torch.as_tensor(np.asarray(value))) for key, value in zip(keys, parameters, strict=True)
        )
        self.model.load_state_dict(state, strict=True)

    def fit_model(self, config: dict | None = None) -> int:
        config = config or {}
        x, y = _require(self.train)
        epochs = int(config.get("local_epochs", 1))
        learning_rate = float(config.get("learning_rate", 0.005))
        mu = float(config.get("proximal_mu", 0.0))
        # The weights as received from the aggregator, for FedProx's proximal term.
        global_weights = [p.detach().clone() for p in self.model.parameters()] if mu > 0 else []

        inputs = torch.from_numpy(x).to(self.device)
        targets = torch.from_numpy(y).to(self.device)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(SEED + int(config.get("server_round", 0)))
        self.model.train()
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator).to(self.device)
            for start in range(0, len(order), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                optimizer.zero_grad()
                loss = loss_fn(self.model(inputs[batch]), targets[batch])
                if mu > 0:
                    proximal = sum(
                        torch.sum((w - w0) ** 2) for w, w0 in zip(self.model.parameters(), global_weights, strict=True)
                    )
                    loss = loss + mu / 2 * proximal
                loss.backward()
                optimizer.step()
        return len(y)

    @torch.no_grad()
    def evaluate_model(self) -> tuple[float, float, int]:
        x, y = _require(self.test)
        inputs = torch.from_numpy(x).to(self.device)
        targets = torch.from_numpy(y).to(self.device)
        self.model.eval()
        logits = self.model(inputs)
        loss = nn.functional.cross_entropy(logits, targets).item()
        accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
        return float(loss), float(accuracy), len(y)

    def get_input_example(self) -> np.ndarray:
        """Two all-zero images of the model's input: (2, 1, 8, 8) float32 scaled to [0, 1]."""
        return np.zeros((2, *INPUT_SHAPE), dtype=np.float32)


def _require(split: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    if split is None:
        raise RuntimeError("no data: call set_model_data() first")
    return split
