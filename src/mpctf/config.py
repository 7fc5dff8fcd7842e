"""The run configuration: one YAML file describes a whole federation.

Defaults live here and only here. Validation reports every problem at once, one line each, naming the key, what
is wrong and what is allowed, before any model is loaded. Pluggable families (strategies, codecs, splits,
chunking) are written as ``{name: ..., <their own params>}``; the name is checked against its registry and the
params against that class's own ``Params`` model.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpctf.errors import ConfigError
from mpctf.privacy.config import PrivacyConfig
from mpctf.strict_yaml import dump_yaml, load_yaml
from mpctf.tune.config import TuneConfig

PositiveInt = Annotated[int, Field(ge=1)]
PartyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(BaseModel):
    """``{name: ..., **params}`` for one member of a registry; the params are checked by :func:`resolve_spec`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Strict):
    #: ``smollm2-135m-instruct`` (built in), ``tiny-llama`` (random 2-layer model for tests), a local folder, or a
    #: Hugging Face id already in the local cache.
    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: Keep only the first N decoder layers (a smaller, faster model that still has the real embeddings).
    num_layers: PositiveInt | None = None


class LoraConfig(Strict):
    r: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class QloraConfig(Strict):
    """The 4-bit base of ``mode: qlora`` (Dettmers et al., 2023); the adapter itself is ``training.lora``."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class PromptTuningConfig(Strict):
    """``mode: prompt_tuning`` (Lester et al., 2021): trained embeddings of virtual tokens before the input."""

    num_virtual_tokens: PositiveInt = 20
    #: Start the virtual tokens from the embeddings of this text (repeated to length); random vocabulary
    #: embeddings when absent.
    init_text: str | None = None


class BlackBoxPromptConfig(Strict):
    """``mode: blackbox_prompt`` (BBT, Sun et al., ICML 2022; FedBPT, Sun et al., 2023): forward passes only. A
    vector ``z`` of ``dim`` values, projected by a fixed random matrix (drawn from the run's seed) into the
    embeddings of ``num_virtual_tokens`` virtual tokens, is searched by CMA-ES at each party; only ``z`` is
    exchanged."""

    num_virtual_tokens: PositiveInt = 10
    dim: PositiveInt = 500
    #: CMA-ES generations a party runs per round, each scoring ``popsize`` candidates on one batch of its rows.
    generations: PositiveInt = 8
    popsize: Annotated[int, Field(ge=2)] = 20
    #: CMA-ES's initial step size in ``z`` space, restarted every round around the global ``z``.
    sigma: Annotated[float, Field(gt=0)] = 1.0


class PrefixTuningConfig(Strict):
    """``mode: prefix_tuning`` (Li and Liang, 2021): trained keys and values prepended in every layer."""

    num_virtual_tokens: PositiveInt = 20
    #: Reparametrize the prefix through a two-layer MLP of this hidden size (the paper's stabilizer); off by default.
    projection_hidden_size: PositiveInt | None = None


class PTuningConfig(Strict):
    """``mode: p_tuning`` (Liu et al., 2021, "GPT Understands, Too"): virtual tokens produced by an encoder."""

    num_virtual_tokens: PositiveInt = 20
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: PositiveInt = 128
    encoder_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class Ia3Config(Strict):
    """``mode: ia3`` (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper"):
    learned rescaling vectors on the named modules' activations."""

    target_modules: list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"], min_length=1)
    #: Those of ``target_modules`` that are feed-forward layers (IA3 scales their input, not their output).
    feedforward_modules: list[str] = Field(default_factory=lambda: ["down_proj"])

    @model_validator(mode="after")
    def _feedforward_subset(self) -> Ia3Config:
        extra = [m for m in self.feedforward_modules if m not in self.target_modules]
        if extra:
            raise ValueError(
                f"`feedforward_modules` must be a subset of `target_modules`; {', '.join(extra)} is not"
            )
        return self


class ArchitectureConfig(Strict):
    """The shape of a Llama model built with random weights (``mode: pretrain`` with ``from_scratch``)."""

    hidden_size: PositiveInt = 256
    intermediate_size: PositiveInt = 768
    num_hidden_layers: PositiveInt = 4
    num_attention_heads: PositiveInt = 4
    num_key_value_heads: PositiveInt = 2
    max_position_embeddings: PositiveInt = 1024
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` {self.hidden_size} must be divisible by `num_attention_heads` "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` {self.num_attention_heads} must be divisible by `num_key_value_heads` "
                f"{self.num_key_value_heads}"
            )
        return self


class PretrainConfig(Strict):
    """``mode: pretrain``: every parameter trained, from random weights or from ``model.name``'s weights."""

    #: True: a Llama of ``architecture`` with random weights and ``model.name``'s tokenizer; false: continue
    #: pre-training ``model.name``.
    from_scratch: bool = True
    architecture: ArchitectureConfig = ArchitectureConfig()


def _changed(model: BaseModel, keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` the user set to something other than their default.

    A key written with its default value is harmless, and the run directory's config.yaml (which every
    party process re-reads) writes every key, so only a changed value can be a mistake."""
    fields = type(model).model_fields
    return [
        k
        for k in keys
        if k in model.model_fields_set
        and getattr(model, k) != fields[k].get_default(call_default_factory=True)
    ]


def _check_processes_and_gpus(model: BaseModel, processes: str, gpus: str) -> None:
    """One process per GPU: a process count set beside a different GPU count is a contradiction."""
    n_proc, n_gpu = getattr(model, processes), getattr(model, gpus)
    if n_gpu is not None and processes in model.model_fields_set and n_proc not in (1, n_gpu):
        raise ValueError(f"`{processes}` is {n_proc} but `{gpus}` is {n_gpu}; each process trains on one GPU")


#: Sections of ``training`` that belong to one or more modes (a section set for another mode is an error).
MODE_SECTIONS = (
    "lora",
    "qlora",
    "prompt_tuning",
    "blackbox_prompt",
    "prefix_tuning",
    "p_tuning",
    "ia3",
    "pretrain",
)


class TrainingConfig(Strict):
    #: What is trained and exchanged: one of the registered training modes (``lora``, ``qlora``, ``ia3``,
    #: ``prompt_tuning``, ``prefix_tuning``, ``p_tuning``, ``full``, ``pretrain``, and ``blackbox_prompt``,
    #: which needs forward passes only).
    mode: str = "lora"
    lora: LoraConfig = LoraConfig()
    qlora: QloraConfig = QloraConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    blackbox_prompt: BlackBoxPromptConfig = BlackBoxPromptConfig()
    prefix_tuning: PrefixTuningConfig = PrefixTuningConfig()
    p_tuning: PTuningConfig = PTuningConfig()
    ia3: Ia3Config = Ia3Config()
    pretrain: PretrainConfig = PretrainConfig()
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    #: The local optimizer, re-created every round: ``adamw``, or ``sgd``, the rule SCAFFOLD's and FedOpt's
    #: analyses assume (``momentum`` applies to it only).
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: ``reset``: a fresh local optimizer every round. ``keep``: each party carries its optimizer's state (AdamW's
    #: moments, SGD's momentum) into its next round, so a round's first steps are not AdamW's bias-corrected
    #: sign steps of size ``lr`` on every coordinate; a restarted party starts afresh; a party trained by several
    #: processes keeps each process's part (its shard's, under FSDP). See docs/results.md,
    #: "Why the global accuracy swings".
    optimizer_state: Literal["reset", "keep"] = "reset"
    #: Optimizer steps per round at most; by default one pass over the round's chunk.
    local_steps: PositiveInt | None = None
    max_length: Annotated[int, Field(ge=8)] = 128
    #: What an over-long row loses (classification and instruction tasks): the text field is cut, never the
    #: template, so the instruction and the answer cue always stay. ``keep_end`` keeps the text's end,
    #: ``keep_start`` its beginning (an e-mail's subject, a review's opening). The default is the one that
    #: measured better: docs/results.md, "Truncation: which end of the text to keep".
    truncation: Literal["keep_start", "keep_end"] = "keep_end"
    #: Torch CPU threads per party process; by default the host's cores shared among its party processes.
    threads: PositiveInt | None = None
    #: Processes that train each party's round together (torch.distributed data parallel: gloo on CPU, NCCL on
    #: GPUs). The party process is rank 0; each round's batch is split across the ranks, gradients averaged.
    processes_per_party: PositiveInt = 1
    #: GPUs each party trains on, one process per GPU (so it also sets ``processes_per_party``).
    gpus_per_party: PositiveInt | None = None
    #: How a party's processes share the model: ``ddp`` (every process holds it whole) or ``fsdp`` (PyTorch
    #: FSDP2: parameters, gradients and optimizer state sharded over the processes; modes full and pretrain,
    #: one party per process, so not on the local backend). By default fsdp for full and pretrain on GPUs
    #: outside the local backend, ddp otherwise.
    sharding: Literal["ddp", "fsdp"] | None = None

    @model_validator(mode="after")
    def _momentum_needs_sgd(self) -> TrainingConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(
                f"`momentum` only applies to optimizer 'sgd', but `optimizer` is {self.optimizer!r}"
            )
        return self

    @model_validator(mode="after")
    def _processes_match_gpus(self) -> TrainingConfig:
        _check_processes_and_gpus(self, "processes_per_party", "gpus_per_party")
        return self

    @model_validator(mode="after")
    def _mode_and_sections(self) -> TrainingConfig:
        # Nothing to check for the defaults; returning early also keeps the default instance below from
        # importing the modes (and torch) while this module is still being imported.
        if not self.model_fields_set & {"mode", *MODE_SECTIONS}:
            return self
        from mpctf.model.modes import MODES

        try:
            mode = MODES.get(self.mode)
        except KeyError as exc:
            raise ValueError(f"`mode`: {exc.args[0]}") from None
        stray = [s for s in _changed(self, MODE_SECTIONS) if s not in mode.sections]
        if stray:
            users = [m for m in MODES.names() if stray[0] in MODES.get(m).sections]
            raise ValueError(
                f"`{stray[0]}` only applies to mode {' or '.join(users)}, but `mode` is {self.mode!r}"
            )
        return self


class TaskConfig(Strict):
    #: How rows become training examples and how the model is scored: ``classification`` (a verbalizer),
    #: ``instruction`` (chat fine-tuning, exact match), ``chat`` (conversations, every assistant turn trained on)
    #: or ``causal_lm`` (packed raw text, perplexity).
    type: str = "classification"
    #: classification: the prompt; instruction: the user's message. Filled from the row's fields.
    prompt: str = "{text}"
    #: causal_lm: the field holding the raw text.
    text_field: str = "text"
    label_field: str = "label"
    #: classification: label value in the data → the answer text the model should produce (the verbalizer).
    labels: Annotated[dict[str, str], Field(min_length=2)] | None = None
    #: instruction: the field holding the answer the model should give.
    answer_field: str = "answer"
    #: instruction, chat: a system message (chat: for conversations without one); else the template's default.
    system: str | None = None
    #: instruction, chat: tokens generated per held-out question when scoring exact match.
    max_new_tokens: PositiveInt = 32
    #: chat: the field holding each row's conversation, ``[{role, content}, ...]``.
    messages_field: str = "messages"

    @field_validator("prompt")
    @classmethod
    def _prompt_has_fields(cls, prompt: str) -> str:
        if not re.search(r"\{[A-Za-z_][A-Za-z0-9_]*\}", prompt):
            raise ValueError("must contain at least one {field} placeholder, e.g. '{text}'")
        return prompt

    @model_validator(mode="after")
    def _type_and_keys(self) -> TaskConfig:
        from mpctf.data.tasks import TASKS

        try:
            task = TASKS.get(self.type)
        except KeyError as exc:
            raise ValueError(f"`type`: {exc.args[0]}") from None
        for key in task.required_keys:
            if getattr(self, key) is None:
                raise ValueError(f"`{key}` is required with type {self.type!r}")
        shared = {"type", "label_field", "text_field"}
        stray = sorted(_changed(self, self.model_fields_set - shared - set(task.config_keys)))
        if stray:
            raise ValueError(f"`{stray[0]}` has no effect with type {self.type!r}")
        return self


class DatasetConfig(Strict):
    """Either a built-in dataset or a party's own file: JSON Lines, CSV, Parquet or a ``save_to_disk`` folder."""

    builtin: Literal["rotten_tomatoes", "chatterbot", "austen", "sms_spam", "trec"] | None = None
    path: Path | None = None
    #: Keep only rows whose field has one of the listed values, e.g. ``{language: [english]}``.
    where: dict[str, list[str]] | None = None
    #: Use at most this many rows (a deterministic sample), for quick experiments.
    max_samples: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of `builtin` or `path`")
        return self


class EvalConfig(Strict):
    #: Share of the built-in dataset held out for testing (whole key groups, disjoint from every party).
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    #: Hold out whole groups of this field (e.g. ``movie_name``) so no test group is seen in training.
    group_by: str | None = None
    #: Or a file of test rows of the same format.
    path: Path | None = None
    #: Score only held-out rows whose field has one of the listed values, e.g. ``{topic: [trivia]}`` (applied
    #: after the hold-out, so parties never train on the excluded held-out rows either).
    where: dict[str, list[str]] | None = None
    max_samples: PositiveInt | None = 300
    batch_size: PositiveInt = 32
    #: Score the global model after every N-th round, and always after the last one: scoring a large held-out
    #: set can cost as much as a round of training.
    every_rounds: PositiveInt = 1
    #: Score the untrained model too (round 0): the baseline that "before training" in the report refers to.
    before_training: bool = True


class ValidationConfig(Strict):
    """Each party holds out a slice of its own rows; after every scored round it scores the global model on that
    slice and sends back only the metrics, which the server averages weighted by rows. ``best_round`` is chosen
    on them (never on the test set), and ``patience`` stops the run early."""

    #: Share of each party's rows held out (a seeded sample; the party never trains on them).
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    #: At most this many validation rows per party.
    max_samples: PositiveInt | None = 200
    batch_size: PositiveInt = 32
    #: Stop after this many scored rounds without a better validation score; ``None`` never stops early.
    patience: PositiveInt | None = None
    #: How much better a score must be to count as better.
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class DataConfig(Strict):
    dataset: DatasetConfig | None = None
    #: How a shared dataset is assigned to parties (simulations); ignored for parties with their own files.
    split: PluginSpec = PluginSpec(name="iid")
    #: How each party's data is cut into per-round chunks.
    partition: PluginSpec = PluginSpec(name="fixed_size", size=64)
    eval: EvalConfig = EvalConfig()
    #: Federated validation on slices of the parties' own rows (off by default).
    validation: ValidationConfig | None = None


class HostConfig(Strict):
    """Where ``mpctf launch`` starts a party over SSH (OpenSSH client) instead of on this host."""

    #: ``user@host`` or ``host``, as given to ``ssh``.
    address: Annotated[str, Field(min_length=1, pattern=r"^[^\s-][^\s]*$")]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    #: Folder on the remote host for the party's config, credentials and logs (relative to the login folder).
    work_dir: str = "mpctf-party"
    #: The remote interpreter that has mpctf installed, e.g. ``/opt/mpctf/.venv/bin/python``.
    python: str = "python3"
    #: The party's data file on the remote host; replaces ``parties[].data.path`` there.
    data_path: str | None = None
    #: ``CUDA_VISIBLE_DEVICES`` for the party, e.g. ``"0,1"``.
    devices: str | None = None
    #: ``HOST:PORT`` the remote host dials to reach the server; by default the address its SSH connection came
    #: from, with the launch's server port.
    server_address: str | None = None


class AttackConfig(Strict):
    """SIMULATION ONLY: makes a party send a poisoned update, to measure robust strategies (benchmarks, tests).

    ``sign_flip`` sends ``-factor · update``; ``scale`` sends ``factor · update``. A real party can of course
    send anything; this knob only lets an honest simulation reproduce the classic attacks of the robust-aggregation
    literature (Blanchard et al., 2017; Yin et al., 2018)."""

    kind: Literal["sign_flip", "scale"]
    factor: Annotated[float, Field(gt=0)] = 1.0


class PartyConfig(Strict):
    name: PartyName
    #: Start this party on another machine over SSH (``backend.name: flower``); on this host when absent.
    host: HostConfig | None = None
    #: The party's own data; without it the party gets its share of ``data.dataset``.
    data: DatasetConfig | None = None
    #: This party's LoRA rank and alpha when they differ from ``training.lora`` (heterogeneous-rank strategies).
    lora_rank: PositiveInt | None = None
    lora_alpha: Annotated[float, Field(gt=0)] | None = None
    #: Memory this party may use for training, in GiB; caps what the party measures as free.
    memory_gb: Annotated[float, Field(gt=0)] | None = None
    #: This party's ``training.processes_per_party`` / ``training.gpus_per_party`` when they differ.
    processes: PositiveInt | None = None
    gpus: PositiveInt | None = None
    #: SIMULATION ONLY (benchmarks and tests of robust strategies): this party poisons its updates.
    attack: AttackConfig | None = None

    @model_validator(mode="after")
    def _processes_match_gpus(self) -> PartyConfig:
        _check_processes_and_gpus(self, "processes", "gpus")
        return self


class FederationConfig(Strict):
    rounds: PositiveInt = 3
    #: Parties sampled per round (uniformly, seeded); all parties by default.
    parties_per_round: PositiveInt | None = None
    #: A round whose accepted updates are fewer than this fails.
    min_parties: PositiveInt = 1
    round_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    strategy: PluginSpec = PluginSpec(name="fedavg")
    #: Updates whose L2 norm exceeds this are rejected for the round.
    max_update_norm: Annotated[float, Field(gt=0)] | None = None


class CommunicationConfig(Strict):
    """Codec chains per direction, applied in order by the sender and undone in reverse by the receiver."""

    #: Party → server, applied to ``local − global``; e.g. ``[{name: topk, fraction: 0.01}, {name: int8}]``.
    uplink: list[PluginSpec] = Field(default_factory=list)
    #: Server → party, applied to the global state.
    downlink: list[PluginSpec] = Field(default_factory=list)


#: The training modes whose parties can shard the model with FSDP.
FSDP_MODES = ("full", "pretrain")


class BackendConfig(Strict):
    #: ``local``: every party in this process; ``processes``: each party in its own worker process on this host;
    #: ``flower``: Flower's deployment engine (SuperLink and one SuperNode per party).
    name: Literal["local", "processes", "flower"] = "local"


class RunConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "run"
    seed: int = 0
    output_dir: Path = Path("runs")
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    task: TaskConfig
    data: DataConfig = DataConfig()
    parties: list[PartyConfig] = Field(min_length=1)
    federation: FederationConfig = FederationConfig()
    communication: CommunicationConfig = CommunicationConfig()
    backend: BackendConfig = BackendConfig()
    #: Client-level DP, sample-level DP-SGD, secure aggregation, homomorphic encryption; all off by default.
    privacy: PrivacyConfig = PrivacyConfig()
    #: What ``mpctf tune`` searches (ignored by a plain run).
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        names = [p.name for p in self.parties]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"party names must be unique; repeated: {', '.join(dupes)}")
        if self.data.dataset is None and any(p.data is None for p in self.parties):
            missing = next(p.name for p in self.parties if p.data is None)
            raise ValueError(
                f"party {missing!r} has no `data` and there is no shared `data.dataset` to split"
            )
        fed = self.federation
        if fed.parties_per_round is not None and fed.parties_per_round > len(self.parties):
            raise ValueError(
                f"federation.parties_per_round={fed.parties_per_round} exceeds the {len(self.parties)} parties"
            )
        per_round = fed.parties_per_round or len(self.parties)
        if fed.min_parties > per_round:
            raise ValueError(
                f"federation.min_parties={fed.min_parties} exceeds the {per_round} parties per round"
            )
        if self.data.validation is not None and (enabled := self.privacy.enabled()):
            raise ValueError(
                f"data.validation sends each party's validation metrics to the server in the clear, outside "
                f"what privacy.{enabled[0]} promises and accounts for; remove one of them"
            )
        if self.training.sharding == "fsdp":
            if self.training.mode not in FSDP_MODES:
                raise ValueError(
                    f"training.sharding: fsdp shards modes {' and '.join(FSDP_MODES)}; mode "
                    f"{self.training.mode!r} trains a small state, use ddp"
                )
            if self.backend.name == "local":
                # FSDP needs the process-wide default process group, and the local backend hosts every
                # party in one process.
                raise ValueError(
                    "training.sharding: fsdp needs one process per party; set backend.name to processes or flower"
                )
        return self

    @property
    def party_names(self) -> list[str]:
        return [p.name for p in self.parties]

    def party(self, name: str) -> PartyConfig:
        """The config entry of one party."""
        return next(p for p in self.parties if p.name == name)

    def party_processes(self, party: str) -> int:
        """How many processes train ``party``'s rounds (its own setting, else ``training``'s; GPUs count first)."""
        spec, train = self.party(party), self.training
        return spec.gpus or spec.processes or train.gpus_per_party or train.processes_per_party

    def party_training(self, party: str) -> TrainingConfig:
        """``training`` with the party's own LoRA rank/alpha applied."""
        spec = self.party(party)
        lora = self.training.lora.model_copy(
            update={
                "r": spec.lora_rank or self.training.lora.r,
                "alpha": spec.lora_alpha or self.training.lora.alpha,
            }
        )
        return self.training.model_copy(update={"lora": lora})


# --- loading and error reporting ----------------------------------------------------------------


def load_config(source: str | Path | dict[str, Any], *, party: str | None = None) -> RunConfig:
    """Read and validate a config from a YAML path or a dict; relative paths resolve against the YAML's folder.

    With ``party`` (a party's own host) only the files that party reads must exist: the others live on other
    machines. Raises :class:`ConfigError` whose message has one line per problem.
    """
    if isinstance(source, dict):
        raw, base = source, Path.cwd()
    else:
        path = Path(source)
        raw = load_yaml(path)
        base = path.resolve().parent
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        failed = {tuple(err["loc"]) for err in exc.errors()}
        problems += _bools_misused(RunConfig, raw, skip=failed) + _raw_missing_files(raw, base, party)
        raise ConfigError("\n".join(problems)) from None
    misused = _bools_misused(RunConfig, raw) + _plugin_bools_misused(config)
    if misused:
        raise ConfigError("\n".join(misused))
    config = _resolve_paths(config, base)
    plugins = _check_plugins(config)
    # Privacy rules read the strategy's and codecs' declared properties: only once their names are known.
    problems = plugins + _check_paths(config, party) + _check_hosts(config)
    if not plugins:
        problems += _check_privacy(config) + _check_forward_only(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _bools_as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return {k: _bools_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bools_as_text(v) for v in value]
    return value


def _at(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """The raw value at a pydantic error location, and that location without pydantic's union-member tags."""
    path: list[Any] = []
    for part in loc:
        if (isinstance(raw, dict) and part in raw) or (isinstance(raw, list) and isinstance(part, int)):
            if isinstance(raw, list) and not -len(raw) <= part < len(raw):
                return None, loc
            raw = raw[part]
            path.append(part)
    return raw, tuple(path)


def _bools_misused(
    model: type[BaseModel], raw: Any, *, prefix: tuple[Any, ...] = (), skip: Collection[tuple[Any, ...]] = ()
) -> list[str]:
    """One line per boolean given where ``model`` wants a number (pydantic would read ``true`` as 1).

    Validating again with every boolean spelled as text finds them: a yes/no field still accepts
    ``"true"``, a number field no longer does."""
    try:
        model.model_validate(_bools_as_text(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            value, loc = _at(raw, tuple(err["loc"]))
            if isinstance(value, bool) and loc not in skip and tuple(err["loc"]) not in skip:
                wanted = _WANTED.get(err["type"], "another type")
                key = ".".join(map(str, prefix + loc))
                problems.append(
                    f"config key `{key}`: expected {wanted}, got the boolean {str(value).lower()}"
                )
        return list(dict.fromkeys(problems))
    return []


_WANTED = {
    "int_parsing": "an integer",
    "float_parsing": "a number",
    "literal_error": "one of the listed values",
}


def _plugin_bools_misused(config: RunConfig) -> list[str]:
    problems: list[str] = []
    for registry, spec, key in _plugin_specs(config):
        if spec.name in registry:
            problems += _bools_misused(
                registry.get(spec.name).Params, spec.params, prefix=tuple(key.split("."))
            )
    return problems


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"config key `{loc}`: unknown key{hint}"
    if err["type"] == "missing":
        return f"config key `{loc}`: required but missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"config key `{loc}`: {msg}{shown}" if loc else f"config: {msg}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def resolve_spec(registry: Any, spec: PluginSpec, key: str) -> tuple[type, Any]:
    """The registered class for ``spec.name`` and its validated params; ``ValueError`` with a one-line reason."""
    try:
        cls = registry.get(spec.name)
    except KeyError as exc:
        raise ValueError(f"config key `{key}.name`: {exc.args[0]}") from None
    try:
        params = cls.Params(**spec.params)
    except ValidationError as exc:
        lines = [_describe({**e, "loc": (key, *e["loc"])}) for e in exc.errors()]
        raise ValueError("\n".join(lines)) from None
    return cls, params


def _plugin_specs(config: RunConfig) -> list[tuple[Any, PluginSpec, str]]:
    from mpctf.aggregation import STRATEGIES
    from mpctf.comm import CODECS

    comm = config.communication
    return [
        (STRATEGIES, config.federation.strategy, "federation.strategy"),
        *[(CODECS, spec, f"communication.uplink.{i}") for i, spec in enumerate(comm.uplink)],
        *[(CODECS, spec, f"communication.downlink.{i}") for i, spec in enumerate(comm.downlink)],
    ]


def _check_plugins(config: RunConfig) -> list[str]:
    problems: list[str] = []
    for registry, spec, key in _plugin_specs(config):
        try:
            resolve_spec(registry, spec, key)
        except ValueError as exc:
            problems.extend(str(exc).splitlines())
    return problems


def _check_hosts(config: RunConfig) -> list[str]:
    """Parties on other machines are started over SSH by the Flower launcher only."""
    hosted = [p.name for p in config.parties if p.host is not None]
    if hosted and config.backend.name != "flower":
        return [
            f"config key `parties[].host`: parties {', '.join(hosted)} name a host, which needs "
            f"`backend.name: flower` (got {config.backend.name!r})"
        ]
    return []


def _check_privacy(config: RunConfig) -> list[str]:
    """One line per privacy mechanism that cannot work with the chosen strategy, codecs or training mode."""
    from mpctf.aggregation import STRATEGIES
    from mpctf.comm import CODECS
    from mpctf.model.modes import MODES
    from mpctf.privacy.compat import incompatibilities

    privacy = config.privacy
    if privacy == PrivacyConfig():
        return []
    problems = incompatibilities(
        STRATEGIES.get(config.federation.strategy.name),
        [CODECS.get(spec.name) for spec in config.communication.uplink],
        privacy,
        MODES.get(config.training.mode),
    )
    several = [p for p in config.party_names if config.party_processes(p) > 1]
    if privacy.sample_dp is not None and several:
        # Opacus's per-sample clipping and our DDP ranks each own the backward pass; not combined yet.
        problems.append(
            f"sample_dp trains in one process per party, but party {several[0]!r} has "
            f"{config.party_processes(several[0])} processes"
        )
    return [f"config key `privacy`: {p}" for p in dict.fromkeys(problems)]


def _check_forward_only(config: RunConfig) -> list[str]:
    """What a mode without gradients (``blackbox_prompt``) cannot run with: strategies that act on the parties'
    gradient steps or on LoRA factors, and several processes per party."""
    from mpctf.aggregation import STRATEGIES
    from mpctf.aggregation.base import Strategy
    from mpctf.model.modes import MODES

    mode = config.training.mode
    if not MODES.get(mode).forward_only:
        return []
    problems = []
    name = config.federation.strategy.name
    strategy = STRATEGIES.get(name)
    if (
        strategy.party_hooks.__func__ is not Strategy.party_hooks.__func__  # type: ignore[attr-defined]
        or strategy.merges_into_base
        or strategy.folds_lora_scale
    ):
        problems.append(
            f"config key `federation.strategy`: {name!r} acts on the parties' gradient steps or LoRA factors, "
            f"but training.mode {mode!r} searches its prompt without gradients; use a strategy that only "
            "combines updates (fedavg, fedavgm, fedadam, median, trimmed_mean, ...)"
        )
    several = [p for p in config.party_names if config.party_processes(p) > 1]
    if several:
        problems.append(
            f"config key `training.processes_per_party`: training.mode {mode!r} scores its candidates in one "
            f"process per party, but party {several[0]!r} has {config.party_processes(several[0])}"
        )
    return problems


def _resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    def fix_ds(ds: DatasetConfig | None) -> DatasetConfig | None:
        return None if ds is None else ds.model_copy(update={"path": fix(ds.path)})

    data = config.data.model_copy(
        update={
            "dataset": fix_ds(config.data.dataset),
            "eval": config.data.eval.model_copy(update={"path": fix(config.data.eval.path)}),
        }
    )
    parties = [p.model_copy(update={"data": fix_ds(p.data)}) for p in config.parties]
    model_path = base / config.model.name
    model = (
        config.model.model_copy(update={"name": str(model_path.resolve())})
        if model_path.exists()
        else config.model
    )
    return config.model_copy(
        update={"data": data, "parties": parties, "output_dir": fix(config.output_dir), "model": model}
    )


def _raw_missing_files(raw: dict[str, Any], base: Path, party: str | None) -> list[str]:
    """Data files that do not exist, read from a config that failed its schema: a schema error must not hide
    them (the same lines :func:`_check_paths` gives a valid config; a party's remote ``host`` is not known yet,
    so every party's file is checked unless ``party`` names one)."""

    def path_at(*keys: Any) -> Any:
        node: Any = raw
        for key in keys:
            if isinstance(node, dict):
                present = key in node
            else:
                present = isinstance(node, list) and isinstance(key, int) and key < len(node)
            if not present:
                return None
            node = node[key]
        return node if isinstance(node, str) and node else None

    parties = raw.get("parties") if isinstance(raw.get("parties"), list) else []
    checks = [
        ("data.dataset.path", path_at("data", "dataset", "path")),
        ("data.eval.path", path_at("data", "eval", "path")),
    ]
    checks += [
        (f"parties.{i}.data.path", path_at("parties", i, "data", "path"))
        for i, p in enumerate(parties)
        if party is None or (isinstance(p, dict) and p.get("name") == party)
    ]
    return [
        f"config key `{key}`: file not found: {value}"
        for key, value in checks
        if value is not None and not (base / value).exists()
    ]


def _check_paths(config: RunConfig, party: str | None = None) -> list[str]:
    # The server checks the files of the parties on this host; a party's own host checks that party's.
    own = [p for p in config.parties if (p.name == party if party else p.host is None)]
    shared = party is None or any(p.data is None for p in own)
    checks: list[tuple[str, Path | None]] = [
        ("data.dataset.path", config.data.dataset.path if config.data.dataset and shared else None),
        ("data.eval.path", config.data.eval.path if party is None else None),
    ]
    checks += [
        (f"parties.{i}.data.path", p.data.path if p.data else None)
        for i, p in enumerate(config.parties)
        if p in own
    ]
    return [
        # `exists`: a data path may be a folder written by `Dataset.save_to_disk`.
        f"config key `{key}`: file not found: {path}"
        for key, path in checks
        if path and not path.exists()
    ]


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (what the run directory records)."""
    return dump_yaml(config.model_dump(mode="json"))
