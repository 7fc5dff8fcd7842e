"""The privacy-stage contract: one mechanism's party half and server half, its exchanges, ledger and traits.

A run's ``privacy:`` section turns into an ordered list of stages, shaped like the codec chain. At the party each
enabled stage's :meth:`PartyStage.protect` runs in ascending :attr:`PrivacyStage.order` on the update
(``local − global``): clipping and noise first, hiding (masking or encryption) last. At the server the stages
unwrap in descending order: :meth:`PrivacyStage.begin_round` (key exchanges, then parameters), the hiding stage
takes every update in :meth:`PrivacyStage.receive`, and :meth:`PrivacyStage.finish` turns the round's sum into
the mean the strategy gets (a stage that does not change the sum returns it). Nothing here does I/O: the server
hands a stage an :data:`Exchange` that sends tasks to parties and returns their answers.

A stage declares what it is (:class:`~mpctf.privacy.compat.MechanismTraits`) and the party ops it answers; a new
mechanism is one module, one :data:`STAGES` registration and one row in the contract test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, RoundTask
from mpctf.privacy.layout import TensorLayout
from mpctf.registry import Registry

if TYPE_CHECKING:
    from mpctf.messages import Update


@dataclass(frozen=True)
class MechanismTraits:
    """What a privacy mechanism declares about itself (``privacy.compat`` judges combinations by these)."""

    #: How sentences name it.
    title: str
    #: The server sees only a sum (or mean) of the updates, never one of them.
    hides_updates: bool = False
    #: Its arithmetic on integer codes is exact (a ring), so an integer quantiser can set its precision.
    exact_on_integer_codes: bool = False
    #: The adaptive-clipping count can ride inside its hidden sum.
    carries_clip_count: bool = False
    #: Its guarantee needs every party to count equally in the aggregate (DP's sensitivity bound).
    uniform_weights: bool = False
    #: It checks a DP ledger (client-level DP's, or DP-SGD's with canary rows), so needs one on.
    audits_dp: bool = False


#: ``{party: request bytes} → {party: reply bytes}`` for the parties that answered (the others dropped).
Exchange = Callable[[dict[str, bytes]], dict[str, bytes]]


@dataclass(frozen=True)
class RunInfo:
    """What every stage may know of the run: public facts, fixed at its start."""

    num_parties: int
    parties_per_round: int | None
    min_parties: int
    #: Bits of the uplink's integer quantiser (``None``: none); a ring may take its precision from it.
    uplink_integer_bits: int | None = None


@dataclass
class RoundState:
    """One round as the stages see it at the server; stages keep their own per-round data in :attr:`scratch`."""

    round: int
    #: Parties of the round; a stage's key exchange may leave some out.
    selected: list[str]
    #: The sampling rate of the selection (parties drawn over parties reachable).
    sampling_rate: float
    #: Instructions for every party, by stage section; per-party ones in :attr:`per_party`.
    instructions: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_party: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Aggregation weight of each party whose update reached the sum.
    weights: dict[str, float] = field(default_factory=dict)
    #: Metrics each stage adds to the round's record.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Sentences the run must say out loud (logged as warnings and recorded with the round).
    warnings: list[str] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)
    #: The parties selected before any exchange (public; DP divides by their number).
    drawn: list[str] = field(default_factory=list)
    #: Extra coordinates a stage adds to a hidden update (name → shape), e.g. the clip count.
    extra_coordinates: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: The hiding stage of the list, if any (others read its range or its threshold).
    hider: PrivacyStage | None = None


@dataclass
class PartyContext:
    """What a party's stages share while protecting one update."""

    task: RoundTask
    num_samples: int
    num_tokens: int
    #: True when a later stage hides the update (earlier stages may then put extra coordinates into it).
    hidden: bool
    header: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class PartyStage:
    """The party half of a stage: keys it holds between exchanges, and what it does to the update."""

    def protect(self, tensors: NamedTensors, instructions: dict[str, Any], ctx: PartyContext) -> NamedTensors:
        """Transform the update as the server's ``instructions`` for this stage say."""
        return tensors

    def handle(self, task: RoundTask) -> bytes:
        """Answer one of the stage's :attr:`PrivacyStage.ops`."""
        raise RuntimeError(f"this stage answers no op, got {task.instructions.get('op')!r}")

    def local_dp(self) -> tuple[Any, Any] | None:
        """``(parameters, ledger)`` of per-example DP the party's local training loop must apply, or ``None``."""
        return None


class PrivacyStage:
    """The server half of one privacy mechanism (see the module docstring for the call order)."""

    registered_name: ClassVar[str]
    traits: ClassVar[MechanismTraits]
    #: Party order (ascending); the server unwraps in descending order.
    order: ClassVar[int]
    #: Task ops the party half answers (``op`` of :class:`~mpctf.messages.RoundTask`).
    ops: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any, run: RunInfo) -> None:
        self.params = params
        self.run = run
        #: Rounds this stage's budget allows at the planned rate, once :meth:`setup` knows (``None``: no budget).
        self.max_rounds: int | None = None

    @property
    def secret_selection(self) -> bool:
        """Whether this stage's guarantee needs the round's selection drawn from the OS's CSPRNG."""
        return False

    @classmethod
    def party_stage(cls, name: str, own: Any | None) -> PartyStage:
        """A fresh party half for party ``name`` (it lives as long as the party process); ``own`` is the stage's
        section of the party's own config (``None`` when absent): most stages follow the server's instructions
        instead, so a party answers them whatever its config says."""
        return PartyStage()

    # --- server half ----------------------------------------------------------------------------
    def setup(self, exchange: Exchange, parties: list[str]) -> dict[str, Any]:
        """Once per run start (e.g. key distribution); returns what to log."""
        return {}

    def begin_round(self, state: RoundState, exchange: Exchange) -> None:
        """Prepare the round: run exchanges, narrow ``state.selected``, write this stage's instructions."""

    def observe(self, state: RoundState, update: Update) -> None:
        """See every accepted update's metrics (e.g. a party's own ε)."""

    def receive(self, state: RoundState, update: Update, reference: NamedTensors) -> bool:
        """Take one update into the round's aggregate; ``False`` leaves it to the next stage or the strategy."""
        return False

    def finish(self, state: RoundState, total: NamedTensors, exchange: Exchange) -> NamedTensors:
        """The round's aggregate after this stage (a sum, or the mean once a stage divides)."""
        return total

    # --- what other stages may ask of a hiding stage -------------------------------------------------
    def least_summed(self, holders: int) -> int:
        """The fewest updates that can reach the hidden sum of ``holders`` parties (noise shares plan for it)."""
        return max(self.run.min_parties, 1)

    def value_range(self) -> float | None:
        """The largest magnitude a hidden value keeps without clamping (``None``: unbounded)."""
        return None

    def divides(self) -> bool:
        """True when :meth:`finish` returns the mean (the pipeline then does not divide the sum itself)."""
        return False

    def stop_reason(self, round_num: int, sampling_rate: float) -> str | None:
        """Why the round must not run (a privacy budget), or ``None``."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What to checkpoint with the round, tagged with the stage's name."""
        return {"stage": self.registered_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses another stage's state."""
        if state.get("stage") != self.registered_name:
            raise ValueError(f"checkpoint holds {state.get('stage')!r}, not {self.registered_name!r}")


def check_hidden_layout(
    update: Update, reference: NamedTensors, extra: dict[str, tuple[int, ...]]
) -> TensorLayout:
    """The layout a hidden update declares, checked against what its party was sent (plus ``extra``)."""
    who = f"party {update.party!r}"
    try:
        layout = TensorLayout.from_json(update.header["privacy"]["layout"])
    except (KeyError, TypeError, ValueError):
        raise UpdateRejected(f"{who}: hidden update without a readable layout") from None
    expected = {k: tuple(v.shape) for k, v in reference.items()} | extra
    got = dict(zip(layout.names, layout.shapes, strict=True))
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
        raise UpdateRejected(f"{who}: hidden update's layout differs at {wrong[0]!r}")
    return layout


STAGES: Registry[PrivacyStage] = Registry("privacy stage")
