"""Config: YAML + base files + dotted overrides, typed and validated before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from picollm.config import Config, apply_overrides, config_from_dict, load_config, parse_override, save_config
from picollm.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_set_overrides_are_typed_like_yaml() -> None:
    cfg = load_config(
        None,
        [
            "optim.lr=3e-4",
            "data.input_files=[a.txt, b.txt]",
            "data.tinystories=null",
            "train.max_tokens=1e6",
            "model.tie_weights=false",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.input_files == ["a.txt", "b.txt"]
    assert cfg.data.tinystories is None
    assert load_config(None, ["train.prompt=Say: a: b"]).train.prompt == "Say: a: b"  # not YAML: the text as given
    assert load_config(None, ["train.prompt=[INST] hi"]).train.prompt == "[INST] hi"  # a string field takes the text
    assert cfg.train.max_tokens == 1_000_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.model.tie_weights is False


def test_experiment_inherits_base_and_command_line_wins(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, name: sgd}\nmodel: {block_size: 64}\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\noptim: {lr: 0.01}\n")
    cfg = load_config(tmp_path / "exp.yaml", ["optim.lr=0.5"])
    assert (cfg.optim.name, cfg.model.block_size, cfg.optim.lr) == ("sgd", 64, 0.5)


def test_a_sampler_of_another_name_replaces_the_base_s_with_its_options(tmp_path: Path) -> None:
    """Options belong to their sampler: sobol over a tpe base takes none of tpe's options; the same name merges."""
    from picollm.sweeps import load_experiment

    base = "study: {sampler: {name: tpe, n_startup_trials: 4}, pruner: {name: median, n_startup_trials: 3}}\n"
    space = "search: {optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n"
    (tmp_path / "base.yaml").write_text(space + base)
    (tmp_path / "other.yaml").write_text("base: base.yaml\nstudy: {sampler: {name: sobol, tpe_after: 8}}\n")
    (tmp_path / "same.yaml").write_text("base: base.yaml\nstudy: {pruner: {n_warmup_steps: 5}}\n")
    other, same = (load_experiment(str(tmp_path / f"{n}.yaml"), []).study for n in ("other", "same"))
    assert (other.sampler, other.sampler_options) == ("sobol", {"tpe_after": 8})
    assert (same.pruner, same.pruner_options) == ("median", {"n_startup_trials": 3, "n_warmup_steps": 5})
    # --set study.sampler.name=... follows the same rule: a new name starts with no options, the same name keeps them
    renamed = load_experiment(str(tmp_path / "base.yaml"), ["study.sampler.name=random"]).study
    kept = load_experiment(
        str(tmp_path / "base.yaml"), ["study.sampler.name=tpe", "study.sampler.multivariate=true"]
    ).study
    assert (renamed.sampler, renamed.sampler_options) == ("random", {})
    for block in ("tpe", None):  # a bare name or null: the new name makes the block
        raw = apply_overrides({"study": {"sampler": block}}, ["study.sampler.name=random"])
        assert raw == {"study": {"sampler": {"name": "random"}}}
    assert (kept.sampler, kept.sampler_options) == ("tpe", {"n_startup_trials": 4, "multivariate": True})


def test_with_values_gives_a_checked_copy_and_leaves_the_original() -> None:
    base = load_config(None, ["data.synthetic=10", "data.tinystories=null"])
    cfg = base.with_values({"optim.lr": "3e-4", "model.block_size": 8.0, "tracking.name": None})
    assert (cfg.optim.lr, cfg.model.block_size, cfg.tracking.name) == (3e-4, 8, None)
    assert (base.optim.lr, base.model.block_size) != (3e-4, 8)
    cfg.train.seed = 7  # every section is the copy's own, changed or not
    assert base.train.seed != 7 and cfg.get("train.seed") == 7 and cfg.get("train.nope") is None
    for values, message in [
        ({"optim.lr": -1.0}, "optim.lr"),
        ({"optim.nope": 1}, "unknown key optim.nope"),
        ({"modle.type": "lstm"}, "unknown section 'modle'"),
        ({"train.anneal_at": [10]}, "train.anneal_at needs optim.schedule=wsd"),
    ]:
        with pytest.raises(ConfigError, match=message):
            base.with_values(values)


def test_resolved_config_is_itself_a_valid_config(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "experiments" / "smoke.yaml", ["optim.lr=0.02"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def shipped_experiments() -> list[Path]:
    """experiments/*.yaml except a user's drafts: names starting with '_' or 'draft' are never shipped."""
    return [p for p in sorted((ROOT / "experiments").glob("*.yaml")) if not p.name.startswith(("_", "draft"))]


def test_shipped_experiments_load() -> None:
    from picollm.config import load_raw
    from picollm.sweeps import load_experiment
    from picollm.sweeps.experiment import make_pruner, make_sampler

    assert {"quick.yaml", "base.yaml", "smoke.yaml", "target.yaml"} <= {p.name for p in shipped_experiments()}
    for path in shipped_experiments():
        assert isinstance(load_config(path), Config), path
        if "search" in load_raw(path):  # a sweep, its own or its base's: its sampler and pruner are built as named
            s = load_experiment(str(path), []).study
            assert (s.n_trials or 0) >= 1 or s.max_tokens, path
            assert make_sampler(s.sampler, load_experiment(str(path), []).space, s.seed, s.sampler_options), path
            assert make_pruner(s.pruner, s.pruner_options), path


def test_a_users_broken_draft_does_not_break_the_suite() -> None:
    draft = ROOT / "experiments" / f"_draft-probe-{os.getpid()}.yaml"
    draft.write_text("search: {optim.lr: [unclosed\n")
    try:
        test_shipped_experiments_load()
    finally:
        draft.unlink()


def test_betas_outside_zero_one_are_refused() -> None:
    for override, message in [("optim.beta1=-0.5", "optim.beta1 must be in [0, 1)"), ("optim.beta2=1", "beta2")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
            load_config(None, [override])


def test_a_crash_while_saving_the_config_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    before = path.read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_config(load_config(None, ["optim.lr=0.5"]), path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_config_and_optim_import_without_a_cycle() -> None:
    import subprocess
    import sys

    code = "import sys, picollm.optim; assert 'picollm.config' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=0"], "optim.lr must be a positive number"),
        (["optim.lr=-1e-3"], "optim.lr must be a positive number"),
        (["model.block_size=0"], "model.block_size must be >= 1"),
        (["model.k=0"], "model.k must be >= 1"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["optim.name=adamx"], "optim.name: unknown value 'adamx'"),
        (["model.type=rnn"], "model.type: unknown value 'rnn'"),
        (["optim.learning_rate=1"], "unknown key optim.learning_rate"),
        (["modle.type=lstm"], "unknown section 'modle'"),
        (["train.epochs=two"], "train.epochs: expected a number"),
        (["train.epochs=1.5"], "train.epochs: expected int"),
        (["model.tie_weights=maybe"], "model.tie_weights: expected bool"),
        (["data.tinystories_weight=1.5"], "data.tinystories_weight must be in [0, 1]"),
        (["optim.nesterov=true"], "optim.nesterov needs optim.momentum > 0"),
        (["model.embed_size=100", "model.n_heads=3"], "divisible by model.n_heads"),
        (["tracking.wandb=maybe"], "tracking.wandb: unknown value"),
        (["train.device=tpu"], "train.device: unknown value"),
        (["optim.lr"], "--set expects key=value"),
        (["data.tinystories=null"], "no data"),
        (["data.input_files=[a.txt"], "data.input_files: expected a list, got '[a.txt', which is not one in YAML"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim: {lr: [1, 2\n", "malformed YAML"),
        ("", "empty"),
        ("- just\n- a list\n", "expected a mapping"),
        ("optim: 3\n", "optim: expected a mapping"),
        ("!!python/object/apply:os.system ['echo hi']\n", "malformed YAML"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
_keys = st.sampled_from(
    [
        "lr",
        "name",
        "block_size",
        "type",
        "batch_size",
        "epochs",
        "tinystories",
        "wandb",
        "k",
        "bogus",
        "weight_decay",
        "positions",
    ]
)
_sections = st.sampled_from(["data", "model", "optim", "train", "tracking", "nope"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_sections, st.one_of(_scalars, st.dictionaries(_keys, _scalars, max_size=4)), max_size=4))
def test_any_raw_dict_gives_a_config_or_a_config_error(raw: dict) -> None:
    """The parser never crashes with anything but a ConfigError, whatever a YAML file holds."""
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_override_parser_never_crashes(item: str) -> None:
    try:
        path, _ = parse_override(item)
    except ConfigError:
        return
    assert all(path)
