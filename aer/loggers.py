"""Lightning's loggers, with the epoch-level curves drawn against the epoch.

Lightning writes what a LightningModule logs at its count of training fetches (with blocks of several
batches a fetch, data.steps_per_fetch, not even the optimizer steps). What the Tagger logs through
Lightning is epoch-level (val/*, test/*, train/*_epoch, train/lr) and carries the epoch it describes
(`epoch`, 1 after the first: Tagger.log_epoch); these loggers write it at step = that epoch, so a
curve reads per epoch whatever the batch size or block, as the report's figures do. The step loss
(train/loss_step) comes with its optimizer step.
"""

from __future__ import annotations

from pytorch_lightning import loggers


class EpochAxis:
    """A logger whose metrics that carry an `epoch` are written at step = that epoch."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "epoch" in metrics:
            metrics = dict(metrics)
            step = int(metrics.pop("epoch"))
        super().log_metrics(metrics, step)


class TensorBoardLogger(EpochAxis, loggers.TensorBoardLogger):
    pass


class CSVLogger(EpochAxis, loggers.CSVLogger):
    pass


class MLFlowLogger(EpochAxis, loggers.MLFlowLogger):
    @property
    def experiment(self):
        """Lightning's, when another process (a worker of the same study, on one tracking server) created the
        experiment between this one's lookup and its own create: then it is found by name."""
        from mlflow.exceptions import MlflowException

        try:
            return super().experiment
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return super().experiment


class WandbLogger(EpochAxis, loggers.WandbLogger):
    pass
