"""An ordered list of codecs: what one direction (party → server, or server → party) applies to an update.

Built from the ``(name, params)`` pairs a config lists, e.g. ``[("topk", {"fraction": 0.01}), ("int8", {}),
("zstd", {"level": 3})]``. ``encode`` runs the stages in order at the sender, ``decode`` in reverse at the
receiver; the header records each stage's name and header so the receiver can check it decodes what was sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mpctf.comm.base import CODECS, Codec
from mpctf.messages import NamedTensors

#: One stage as a config writes it: the registered codec name and its parameters (``None`` for defaults).
StageSpec = tuple[str, Mapping[str, Any] | None]


def build_codec(name: str, params: Mapping[str, Any] | None = None) -> Codec:
    """The codec registered as ``name`` with validated ``params``.

    ``KeyError`` naming the known codecs for an unknown name, ``pydantic.ValidationError`` for bad parameters.
    """
    cls = CODECS.get(name)
    return cls(cls.Params.model_validate(dict(params or {})))


def chain_from_specs(specs: Sequence[Any]) -> CodecChain:
    """A chain from config entries that have ``name`` and ``params`` (``mpctf.config.PluginSpec``)."""
    return CodecChain([(spec.name, spec.params) for spec in specs])


class CodecChain:
    """Codec stages applied in order by :meth:`encode` and in reverse by :meth:`decode`.

    State: one dict per chain per party, passed to every :meth:`encode`; stage ``i`` keeps its own state (the
    top-k residual) in ``state[i]``.
    """

    def __init__(self, specs: Sequence[StageSpec]) -> None:
        self.stages = [build_codec(name, params) for name, params in specs]

    @property
    def names(self) -> list[str]:
        return [stage.registered_name for stage in self.stages]

    @property
    def lossless(self) -> bool:
        """True when every stage is lossless (an empty chain is)."""
        return all(stage.lossless for stage in self.stages)

    @property
    def keeps_state(self) -> bool:
        """True when a stage keeps per-party state, so the same tensors encode differently for each party."""
        return any(stage.keeps_state for stage in self.stages)

    def encode(
        self, tensors: NamedTensors, state: dict[int, dict[str, Any]]
    ) -> tuple[NamedTensors, dict[str, Any]]:
        """Apply every stage in order; the header is ``{"codecs": [{"name": ..., "header": ...}, ...]}``."""
        stage_headers = []
        for index, stage in enumerate(self.stages):
            tensors, header = stage.encode(tensors, state.setdefault(index, {}))
            stage_headers.append({"name": stage.registered_name, "header": header})
        return tensors, {"codecs": stage_headers}

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        """Undo :meth:`encode`, last stage first; ``ValueError`` if the header lists other stages."""
        stage_headers = header.get("codecs", [])
        sent = [entry.get("name") for entry in stage_headers]
        if sent != self.names:
            raise ValueError(f"tensors were encoded by codecs {sent}, this chain decodes {self.names}")
        for stage, entry in zip(reversed(self.stages), reversed(stage_headers), strict=True):
            tensors = stage.decode(tensors, entry["header"])
        return tensors
