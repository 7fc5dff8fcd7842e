"""Training modes: how the base model is wrapped and which tensors are trained and exchanged. Importing this
package registers every built-in mode (one family per module)."""

from mpctf.model.modes import adapters, blackbox, full, prompts  # noqa: F401  (registration side effect)
from mpctf.model.modes.base import MODES, TrainingMode

__all__ = ["MODES", "TrainingMode"]
