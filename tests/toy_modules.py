"""A toy module and datamodule that exercise the fit CLI's mechanism (not a cwpo model)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class ToyModule(L.LightningModule):
    def __init__(self, width: int = 2, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ToyDataModule(L.LightningDataModule):
    def __init__(self, width: int = 2, n: int = 64):
        super().__init__()
        self.width, self.n = width, n

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, self.width, generator=g)
        y = x.sum(-1)
        return DataLoader(TensorDataset(x, y), batch_size=16)
