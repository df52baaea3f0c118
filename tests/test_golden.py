"""Golden outputs: what each preset computes, and its Table 4, against files stored in
tests/golden/.

A seeded build, BatchNorm statistics from a few train-mode passes over fixed random images,
then eval-mode logits of a fixed input: any change to what a network computes (its layers,
their order, the initialisation, the defaults of a block) changes these numbers. Such a change
must be deliberate, so the files are rewritten only on request, and the diff shows it:

    CONDNET_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

The tolerance (relative 1e-4, absolute 1e-4 of the largest logit) is about twenty times the
float32 rounding measured against a float64 run, so that the same code passes on CPUs with other
vector units (AVX2, AVX-512) and fails on any real change.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import condnet
from condnet.cli import main
from tests.deploy_helpers import calibrate_batch_norms

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CONDNET_UPDATE_GOLDEN") == "1"
RESOLUTION = 32  # any size works: the network is fully convolutional up to its pooling
pytestmark = pytest.mark.usefixtures("one_thread")


def golden(name: str, key: str, value):
    """The stored `key` of GOLDEN/`name`; with CONDNET_UPDATE_GOLDEN=1, `value` is stored first."""
    path = GOLDEN / name
    stored = json.loads(path.read_text()) if path.exists() else {}
    if UPDATE:
        stored[key] = value
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    assert key in stored, f"{path} has no {key!r}; regenerate with CONDNET_UPDATE_GOLDEN=1"
    return stored[key]


@torch.no_grad()
def preset_logits(name: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = condnet.build_model(name)
    calibrate_batch_norms(model, torch.Generator().manual_seed(1), RESOLUTION, batch=4)
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(2))
    return model(images)


@pytest.mark.parametrize("name", condnet.list_models())
def test_preset_logits_are_the_stored_ones(name):
    logits = preset_logits(name)
    expected = torch.tensor(golden("logits.json", name, logits.tolist()))
    assert logits.shape == expected.shape == (2, 100)
    scale = expected.abs().max().item()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", condnet.list_models())
def test_table_4_is_the_stored_one(name, capsys):
    """`condnet profile --json` per preset, its figures (its notes are prose, left out)."""
    assert main(["profile", "--model", name, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    del table["notes"]
    assert table == golden("table4.json", name, table)
