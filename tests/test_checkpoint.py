"""The checkpoint schema: the builder's keys, the format version, rebuilding the model."""

import pytest
import torch

from condnet.engine.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    checkpoint_state,
    load_checkpoint,
    model_from_checkpoint,
    rebuild_model,
    save_checkpoint,
)
from condnet.errors import CondnetError
from tests.deploy_helpers import CLASS_NAMES, small_model


def test_builder_writes_the_format_version_and_leaves_out_what_is_not_given(tmp_path):
    model = small_model("se")
    state = checkpoint_state(model, CLASS_NAMES, training={"epoch": 0})
    assert state[FORMAT_KEY] == FORMAT_VERSION
    assert {"model", "model_spec", "class_names", "epoch", "versions"} == set(state) - {FORMAT_KEY}
    save_checkpoint(state, tmp_path / "last.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_a_checkpoint_without_the_version_is_format_1_and_reads(tmp_path):
    state = checkpoint_state(small_model("standard"), CLASS_NAMES)
    del state[FORMAT_KEY]
    save_checkpoint(state, tmp_path / "old.pt")
    assert model_from_checkpoint(load_checkpoint(tmp_path / "old.pt")).num_classes == 7


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "two"])
def test_an_unknown_format_version_is_a_one_line_error(tmp_path, version):
    state = checkpoint_state(small_model("standard"), CLASS_NAMES) | {FORMAT_KEY: version}
    save_checkpoint(state, tmp_path / "new.pt")
    with pytest.raises(CondnetError, match=f"unknown checkpoint {FORMAT_KEY} {version!r}") as err:
        load_checkpoint(tmp_path / "new.pt")
    assert "\n" not in str(err.value)


def test_weights_that_do_not_fit_the_spec_are_one_line_errors():
    model = small_model("standard")
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    with pytest.raises(
        CondnetError,
        match="^file.pt: weights do not fit: Error.s. in loading state_dict for CondNet:$",
    ):
        rebuild_model(model.spec, weights, "file.pt: weights do not fit")
