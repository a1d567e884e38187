"""aer: audio event recognition on AudioSet's embedding features."""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# pytorch-lightning 2.6 builds torch's LeafSpec when it flattens a batch, which torch 2.13 deprecates:
# one FutureWarning in every run, train or evaluate, that a user can do nothing about
_warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                         category=FutureWarning)


class _NoTips(_logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... try installing litlogger"), printed at every Trainer's start."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
