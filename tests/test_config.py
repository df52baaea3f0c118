"""Config files (`condnet.config`): one file may start from another (`base:`)."""

import pytest

from condnet.config import load_config, read_config_file
from condnet.errors import CondnetError


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
