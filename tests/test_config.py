from pathlib import Path

import pytest
import torch
import yaml

from mpctf.config import dump_config, load_config
from mpctf.errors import ConfigError
from support import tiny_config_dict


def _errors(cfg) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.exit_code == 2
    return str(info.value).splitlines()


def test_valid_config_loads(tmp_path: Path) -> None:
    cfg = load_config(tiny_config_dict(tmp_path))
    assert cfg.party_names == ["alice", "bob"]
    assert cfg.federation.strategy.name == "fedavg"


def test_unknown_key_names_key_and_allowed(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["federation"]["roundz"] = 3
    (line,) = _errors(cfg)
    assert line.startswith("config key `federation.roundz`: unknown key; allowed here: rounds,")


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    (line,) = _errors(tiny_config_dict(tmp_path, **{"federation.rounds": 0}))
    assert line == "config key `federation.rounds`: Input should be greater than or equal to 1 (got 0)"


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 0, "training.lr": -1})
    lines = _errors(cfg)
    assert len(lines) == 2
    assert any("training.lr" in x for x in lines) and any("federation.rounds" in x for x in lines)


def test_unknown_strategy_lists_known(tmp_path: Path) -> None:
    (line,) = _errors(tiny_config_dict(tmp_path, **{"federation.strategy": {"name": "fedadgrad"}}))
    assert "config key `federation.strategy.name`: unknown strategy 'fedadgrad'; known:" in line
    assert "fedavg" in line


def test_bad_strategy_param(tmp_path: Path) -> None:
    (line,) = _errors(
        tiny_config_dict(tmp_path, **{"federation.strategy": {"name": "fedavg", "weight": "x"}})
    )
    assert line.startswith("config key `federation.strategy.weight`:")


def test_missing_data_file_names_party_key(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"][1]["data"] = {"path": "nowhere.csv"}
    (line,) = _errors(cfg)
    assert line.startswith("config key `parties.1.data.path`: file not found:")


def test_duplicate_party_names(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"] = [{"name": "a"}, {"name": "a"}]
    (line,) = _errors(cfg)
    assert "repeated: a" in line


def test_yaml_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,category\nok,fresh\n")
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"][0]["data"] = {"path": "d.csv"}
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    cfg["parties"][0]["data"]["path"] = "../d.csv"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).parties[0].data.path == (tmp_path / "d.csv").resolve()


def test_broken_yaml_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: [1, 2\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:2:1: not valid YAML: ")


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("name: t\nseed: 1\nseed: 2\n", "seed", 3),
        ("federation:\n  rounds: 3\n  strategy: {name: fedavg}\n  rounds: 4\n", "rounds", 4),
        ("task: {labels: {a: x, a: y}}\n", "a", 1),
    ],
    ids=["top-level", "nested-section", "flow-mapping"],
)
def test_a_key_written_twice_is_an_error_naming_key_and_line(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    (message,) = _errors(path)
    assert message.startswith(f"{path}:{line}:") and f"key `{key}` appears twice" in message


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "training"}, sort_keys=False)
    path = tmp_path / "c.yaml"
    path.write_text(text + "training: {<<: {batch_size: 4, lr: 0.01}, lr: 0.02}\n")
    assert load_config(path).training.lr == 0.02


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "OFF", "Y", "N"])
@pytest.mark.parametrize("key", ["federation:\n  rounds", "name", "data:\n  eval:\n    before_training"])
def test_yaml_1_1_booleans_are_refused_unquoted(tmp_path: Path, word: str, key: str) -> None:
    cfg = tiny_config_dict(tmp_path)
    section = key.split(":")[0]
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != section}, sort_keys=False)
    path = tmp_path / "c.yaml"
    path.write_text(f"{text}{key}: {word}\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:{text.count(chr(10)) + key.count(chr(10)) + 1}:")
    assert f"`{word}` is ambiguous" in line and "true or false" in line


def test_quoted_yaml_1_1_words_are_text_and_true_false_are_booleans(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"data.eval": {"before_training": False}})
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "task"}, sort_keys=False)
    assert "before_training: false" in text
    path = tmp_path / "c.yaml"
    path.write_text(
        text
        + "task:\n  prompt: '{text}'\n  label_field: category\n  labels: {fresh: 'yes', rotten: \"no\"}\n"
    )
    loaded = load_config(path)
    assert (
        loaded.task.labels == {"fresh": "yes", "rotten": "no"} and loaded.data.eval.before_training is False
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"federation.rounds": True}, "federation.rounds"),
        ({"training.lr": True}, "training.lr"),
        ({"seed": False}, "seed"),
        ({"federation.strategy": {"name": "fedprox", "mu": True}}, "federation.strategy.mu"),
    ],
)
def test_a_boolean_where_a_number_is_expected_is_an_error(tmp_path: Path, override, key) -> None:
    (line,) = _errors(tiny_config_dict(tmp_path, **override))
    assert line.startswith(f"config key `{key}`: expected ") and "got the boolean" in line


def test_a_config_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: t\nseed: 0\ntask: {prompt: 'caf\xe9 {text}'}\n")
    (line,) = _errors(path)
    assert line == f"{path}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_control_characters_and_folders_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: t\x00\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:1: not valid YAML: special characters are not allowed")
    (line,) = _errors(tmp_path)
    assert line == f"config file not found: {tmp_path} (a folder)"


def test_dumped_config_quotes_ambiguous_words_and_reloads(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"task.labels": {"y": "yes", "n": "off"}, "name": "on"})
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(load_config(cfg)))
    assert load_config(path).task.labels == {"y": "yes", "n": "off"}


def test_shipped_examples_validate() -> None:
    for path in sorted(Path(__file__).parents[1].joinpath("examples").glob("*.yaml")):
        load_config(path)


def test_unknown_codec_and_bad_codec_param(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["communication"] = {"uplink": [{"name": "int7"}, {"name": "topk", "fraction": 2.0}]}
    lines = _errors(cfg)
    assert lines[0].startswith("config key `communication.uplink.0.name`: unknown codec 'int7'; known:")
    assert lines[1].startswith("config key `communication.uplink.1.fraction`:")


def _ia3(cfg: dict) -> None:
    cfg["training"].pop("lora", None)
    cfg["training"]["mode"] = "ia3"


def _instruction(cfg: dict) -> None:
    cfg["task"] = {"type": "instruction", "prompt": "{question}", "answer_field": "reply"}


@pytest.mark.parametrize("change", [lambda cfg: None, _ia3, _instruction])
def test_the_recorded_config_loads_again_unchanged(tmp_path: Path, change) -> None:
    # Every party process re-reads the config.yaml the launcher writes, which spells out every default.
    cfg = tiny_config_dict(tmp_path)
    change(cfg)
    config = load_config(cfg)
    assert load_config(yaml.safe_load(dump_config(config))) == config


def test_a_section_of_another_mode_is_still_refused_when_it_changes_a_value(tmp_path: Path) -> None:
    (line,) = _errors(tiny_config_dict(tmp_path, **{"training.qlora": {"quant_type": "fp4"}}))
    assert "`qlora` only applies to mode qlora, but `mode` is 'lora'" in line


def test_processes_per_party_with_a_party_override(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.processes_per_party": 2})
    cfg["parties"][1]["processes"] = 3
    loaded = load_config(cfg)
    assert [loaded.party_processes(p) for p in loaded.party_names] == [2, 3]
    gpus = load_config(tiny_config_dict(tmp_path, **{"training.gpus_per_party": 4}))
    assert gpus.party_processes("alice") == 4


def test_processes_contradicting_gpus_is_an_error(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.processes_per_party": 2, "training.gpus_per_party": 4})
    (line,) = _errors(cfg)
    assert line == (
        "config key `training`: `processes_per_party` is 2 but `gpus_per_party` is 4; each process trains on "
        "one GPU"
    )


def test_fsdp_needs_a_full_model_and_a_process_per_party(tmp_path: Path) -> None:
    lora = tiny_config_dict(tmp_path, **{"training.sharding": "fsdp", "backend.name": "processes"})
    assert _errors(lora) == [
        "config: training.sharding: fsdp shards modes full and pretrain; mode 'lora' trains a small state, use ddp"
    ]
    local = tiny_config_dict(tmp_path, **{"training.sharding": "fsdp", "training.mode": "full"})
    del local["training"]["lora"]
    assert _errors(local) == [
        "config: training.sharding: fsdp needs one process per party; set backend.name to processes or flower"
    ]
    local["backend"] = {"name": "processes"}
    assert load_config(local).training.sharding == "fsdp"


def test_sharding_defaults_to_fsdp_only_for_full_models_on_gpus_off_the_local_backend(tmp_path: Path) -> None:
    from mpctf.party.distributed import party_sharding

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    full = tiny_config_dict(tmp_path, **{"training.mode": "full", "backend.name": "flower"})
    del full["training"]["lora"]
    assert party_sharding(load_config(full), cuda) == "fsdp"
    assert party_sharding(load_config(full), cpu) == "ddp"
    full["backend"] = {"name": "local"}
    assert party_sharding(load_config(full), cuda) == "ddp"
    lora = tiny_config_dict(tmp_path, **{"backend.name": "flower"})
    assert party_sharding(load_config(lora), cuda) == "ddp"
    full["training"]["sharding"] = "ddp"
    full["backend"] = {"name": "flower"}
    assert party_sharding(load_config(full), cuda) == "ddp"


def test_dp_sgd_with_several_processes_per_party_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.processes_per_party": 2})
    cfg["privacy"] = {"sample_dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    (line,) = _errors(cfg)
    assert line == (
        "config key `privacy`: sample_dp trains in one process per party, but party 'alice' has 2 processes"
    )


def test_momentum_needs_the_sgd_optimizer(tmp_path: Path) -> None:
    (line,) = _errors(tiny_config_dict(tmp_path, **{"training.momentum": 0.9}))
    assert (
        line
        == "config key `training`: `momentum` only applies to optimizer 'sgd', but `optimizer` is 'adamw'"
    )
    sgd = load_config(tiny_config_dict(tmp_path, **{"training.optimizer": "sgd", "training.momentum": 0.9}))
    assert (sgd.training.optimizer, sgd.training.momentum) == ("sgd", 0.9)


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: &a [*a]\n", "an alias (*name) is used inside the node it names"),
        ("task: {labels: &l {x: *l}}\n", "an alias (*name) is used inside the node it names"),
        (_alias_bomb(9), "aliases (*name) expand the document beyond 100000 values"),
    ],
    ids=["list-cycle", "mapping-cycle", "expansion"],
)
def test_self_referencing_or_exploding_aliases_are_one_line_errors(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    (line,) = _errors(path)
    assert line.startswith(f"{path}:1:") and line.endswith(reason)


def test_a_shared_anchor_is_fine(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "parties"}, sort_keys=False)
    path = tmp_path / "c.yaml"
    path.write_text(text + "parties:\n  - {name: alice, lora_rank: &r 4}\n  - {name: bob, lora_rank: *r}\n")
    assert [p.lora_rank for p in load_config(path).parties] == [4, 4]
