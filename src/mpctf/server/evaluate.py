"""Global evaluation on the server's held-out examples: whatever metrics the task reports."""

from __future__ import annotations

from collections.abc import Sequence

from mpctf.data.tasks import Example, Task
from mpctf.messages import NamedTensors
from mpctf.model.bundle import ModelBundle


def evaluate_examples(
    bundle: ModelBundle, task: Task, examples: Sequence[Example], batch_size: int
) -> dict[str, float]:
    """The task's metrics (e.g. ``accuracy`` and ``eval_loss``) of the model as it is now."""
    return task.evaluate(bundle.model, examples, batch_size=batch_size, device=bundle.device)


class Evaluator:
    """Evaluates a trainable state on fixed examples (the state is loaded first, so a shared model is fine)."""

    def __init__(self, bundle: ModelBundle, task: Task, examples: Sequence[Example], batch_size: int):
        self.bundle, self.task, self.examples, self.batch_size = bundle, task, list(examples), batch_size

    def __call__(self, state: NamedTensors) -> dict[str, float]:
        self.bundle.mode.set_state(self.bundle.model, state)
        return evaluate_examples(self.bundle, self.task, self.examples, self.batch_size)
