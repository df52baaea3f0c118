"""Config files (`condnet.config`): the paper's recipes, validation errors, and one file may
start from another (`base:`)."""

from pathlib import Path

import pytest

from condnet.cli import main
from condnet.config import load_config, read_config_file
from condnet.errors import CondnetError
from condnet.report.build import PAPER_ROUTING, config_setting

ROOT = Path(__file__).resolve().parents[1]


def test_a_file_sets_its_values_over_its_base_section_by_section(tmp_path):
    (tmp_path / "recipe.yaml").write_text(
        "train:\n  epochs: 9\n  lr_peak: 0.3\ndata:\n  source: synthetic\n  scale: [0.5, 1.0]\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../recipe.yaml\ntrain:\n  epochs: 2\ndata:\n  scale: [0.9, 1.0]\n"
    )
    data = read_config_file(tmp_path / "sub" / "child.yaml")
    assert data == {
        "train": {"epochs": 2, "lr_peak": 0.3},  # the child's epochs, the base's rate
        "data": {"source": "synthetic", "scale": [0.9, 1.0]},  # a list is replaced whole
    }
    cfg = load_config(
        tmp_path / "sub" / "child.yaml", {"train.lr_peak": 0.1, "train.warmup_epochs": 1}
    )
    assert (cfg.train.epochs, cfg.train.lr_peak, cfg.data.scale) == (2, 0.1, [0.9, 1.0])


def test_a_base_that_leads_back_or_is_missing_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(CondnetError, match="leads back to itself"):
        read_config_file(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(CondnetError, match="config file not found: .*nowhere.yaml"):
        read_config_file(tmp_path / "c.yaml")


def test_the_paper_recipe_is_written_once(tmp_path):
    """The block configs hold only what differs from configs/paper.yaml."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    recipe = load_config(configs / "paper.yaml")
    for kind in ("standard", "se", "condconv"):
        text = (configs / f"paper-{kind}.yaml").read_text()
        assert "train:" not in text and "data:" not in text
        cfg = load_config(configs / f"paper-{kind}.yaml")
        recipe.model.name = f"paper-{kind}"
        assert cfg == recipe


def test_paper_configs_are_the_paper_recipe():
    for kind in ("standard", "se", "condconv"):
        cfg = load_config(ROOT / "configs" / f"paper-{kind}.yaml")
        assert cfg.model.name == f"paper-{kind}"
        t = cfg.train
        assert (t.epochs, t.batch_size, t.momentum, t.nesterov, t.weight_decay) == (
            55,
            256,
            0.9,
            True,
            5e-5,
        )
        assert (t.lr_start, t.lr_peak, t.lr_final, t.warmup_epochs) == (0.002, 0.2, 0.0002, 5)
        d = cfg.data
        assert (d.crop, d.resize, d.scale, d.hflip) == (56, 64, [0.08, 1.0], 0.5)
        assert d.ratio == pytest.approx([3 / 4, 4 / 3]) and d.std == [0.229, 0.224, 0.225]
        # Block C's routers at 0.1 x the rate, uncapped (README: Training block C).
        assert (t.routing_lr_scale, t.routing_grad_clip) == (0.1, 0.0)


def test_the_exact_config_is_the_paper_recipe_with_the_papers_routing():
    exact = load_config(ROOT / "configs" / "paper-condconv-exact.yaml")
    shipped = load_config(ROOT / "configs" / "paper-condconv.yaml")
    assert {k: config_setting(exact, k, v) for k, v in PAPER_ROUTING.items()} == PAPER_ROUTING
    shipped.train.routing_lr_scale = 1.0  # the only difference
    assert exact == shipped


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lr": 0.1}, "unknown key 'train.lr'; allowed: train.epochs"),
        ({"train.epochs": 0}, r"train.epochs: expected an integer \(>= 1\), got 0"),
        ({"train.lr_peak": -0.1}, r"train.lr_peak: expected a number \(> 0.0\)"),
        ({"train.batch_size": "big"}, "train.batch_size: expected an integer"),
        ({"data.crop": 80}, r"data.crop: must be at most data.resize \(64\)"),
        ({"data.source": "mnist"}, "data.source: expected one of imagefolder"),
        (
            {"model.overrides.num_experts": 0},
            r"model: stages\[0\].num_experts: expected an integer \(>= 1\)",
        ),
        ({"model.name": "resnet"}, "model: unknown model 'resnet'"),
        ({"run.deterministic": "yes"}, "run.deterministic: expected true or false"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(CondnetError, match=message):
        load_config(None, overrides)


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.batch_size" in err and not out.exists()


@pytest.mark.parametrize(
    "setting, key",
    [
        ("train.nonsense=1", "train.nonsense"),
        ("train.epochs=three", "train.epochs"),
        ("train.lr_peak=-0.5", "train.lr_peak"),
        ("train.epochs=0", "train.epochs"),
        ("model.overrides.num_experts=0", "num_experts"),
        ("data.crop=99", "data.crop"),
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, setting, key):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and not (tmp_path / "run").exists()


def test_an_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(
        CondnetError, match="unknown key 'train.epoch'; did you mean 'train.epochs'"
    ):
        load_config(None, {"train.epoch": 3})
    with pytest.raises(CondnetError, match=r"unknown key 'train.xyz'; allowed: train.epochs"):
        load_config(None, {"train.xyz": 3})  # nothing close: no guess
    with pytest.raises(CondnetError, match="unknown model override 'num_expert'; did you mean"):
        load_config(None, {"model.overrides.num_expert": 3})


def test_a_yaml_error_names_the_file_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 3\n  scale: [0.5, 1.0\ndata: {}\n")
    with pytest.raises(CondnetError) as caught:
        read_config_file(tmp_path / "bad.yaml")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:4:5: not valid YAML: expected ','")
    assert "\n" not in message
