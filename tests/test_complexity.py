"""Table 4 from the real modules against the paper's figures, and against FlopCounterMode."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import condnet
from condnet.cli import main
from condnet.models.complexity import profile
from condnet.models.condconv import set_formulation

# The paper's Table 4 (Block A) as the code counts it, its misprints corrected (see the notes
# of `condnet profile`): (row, repeat, MACs, filter coefficients).
TABLE4_ROWS = [
    ("stem conv 3x3/1", 1, 1354752, 432),
    ("Block 16->16 S1", 1, 8228864, 2624),
    ("Block 16->24 S1", 1, 9834496, 3136),
    ("Block 24->24 S1", 1, 17160192, 5472),
    ("Block 24->40 S2", 1, 10913280, 7008),
    ("Block 40->40 S1", 2, 22328320, 28480),
    ("Block 40->80 S2", 1, 7808640, 20640),
    ("Block 80->80 S1", 3, 31799040, 162240),
    ("Block 80->160 S2", 1, 7667520, 79680),
    ("Block 160->160 S1", 4, 41269760, 842240),
    ("Block 160->320 S1", 1, 15335040, 312960),
    ("head conv 1x1/1", 1, 20070400, 409600),
    ("pool + linear + bias", 1, 128000, 128100),
]


def test_cli_json_reproduces_paper_table_4(capsys):
    assert main(["profile", "--model", "paper-standard", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [(r["name"], r["repeat"], r["macs"], r["coefficients"]) for r in result["rows"]]
    assert rows == TABLE4_ROWS
    assert result["paper_total"] == {"macs": 193770304, "coefficients": 1874512}
    assert result["full_total"]["macs"] == 193770304 + 128000
    assert result["full_total"]["params"] == 2029572


@pytest.mark.parametrize("name", condnet.list_models())
def test_same_convolution_rows_for_every_block(name):
    prof = profile(condnet.build_model(name)).to_dict()
    experts = 4 if name == "paper-condconv" else 1
    assert [(r["name"], r["repeat"], r["macs"]) for r in prof["rows"]] == [
        r[:3] for r in TABLE4_ROWS
    ]
    for row, spec_row in zip(prof["rows"][1:11], TABLE4_ROWS[1:11], strict=False):
        assert row["coefficients"] == experts * spec_row[3]


@pytest.mark.parametrize("name", condnet.list_models())
def test_complete_account_adds_up(name):
    model = condnet.build_model(name)
    prof = profile(model).to_dict()
    assert prof["full_total"]["params"] == sum(p.numel() for p in model.parameters())
    assert sum(k["params"] for k in prof["by_kind"].values()) == prof["full_total"]["params"]
    assert sum(r["all_params"] for r in prof["rows"]) == prof["full_total"]["params"]
    bn = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    )
    assert prof["by_kind"]["bn"]["params"] == bn


def test_condconv_routing_and_mixing_by_hand():
    prof = profile(condnet.build_model("paper-condconv")).to_dict()["by_kind"]
    blocks = (
        [(16, 16)]
        + [(16, 24), (24, 24), (24, 40), (40, 40), (40, 40), (40, 80)]
        + [(80, 80)] * 3
        + [(80, 160)]
        + [(160, 160)] * 4
        + [(160, 320)]
    )
    assert prof["routing"] == {
        "macs": sum(4 * i for i, _ in blocks),
        "params": sum(4 * i + 4 for i, _ in blocks),
    }
    weights = sum(i * 4 * i + 4 * i * 9 + 4 * i * o for i, o in blocks)
    assert prof["mixing"]["macs"] == 4 * weights  # M multiply-adds per mixed weight
    assert prof["conv"]["params"] == 4 * weights + 432 + 409600


@pytest.mark.parametrize("name", condnet.list_models())
@pytest.mark.parametrize("resolution", [56, 40])
def test_flop_counter_mode_agrees(name, resolution):
    # grouped: every CondConv is one aten.convolution, as the profile counts it
    model = set_formulation(condnet.build_model(name).eval(), "grouped")
    prof = profile(model, resolution).to_dict()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    flops = counter.get_flop_counts()["Global"]
    conv_flops = flops.get(torch.ops.aten.convolution, 0)
    assert conv_flops == 2 * prof["by_kind"]["conv"]["macs"]
    assert counter.get_total_flops() == 2 * prof["full_total"]["macs"]


def test_overrides_change_the_table_as_the_formulas_say():
    base = profile(condnet.build_model("paper-standard")).to_dict()["rows"]
    wide = profile(condnet.build_model("paper-standard", kernel_size=5), resolution=64).to_dict()[
        "rows"
    ]
    # Block 16->16 at 64x64: expand 16*64 + depthwise 64*25 + project 64*16, all at 64*64.
    assert wide[1]["macs"] == 64 * 64 * (16 * 64 + 64 * 25 + 64 * 16)
    assert wide[1]["coefficients"] == 16 * 64 + 64 * 25 + 64 * 16
    assert wide[0]["macs"] == 64 * 64 * 16 * 27 and base[0]["macs"] == 56 * 56 * 16 * 27


def test_cli_text_table_has_notes(capsys):
    assert main(["profile", "--model", "paper-standard"]) == 0
    out = capsys.readouterr().out
    assert (
        "193,770,304" in out and "1,874,512" in out and "Filter Cx" in out and "classifier" in out
    )


def test_cli_profile_errors_are_one_line(capsys):
    assert main(["profile", "--model", "paper-se", "--set", "model.overrides.kernel_size=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kernel_size" in err and "Traceback" not in err


def test_cli_set_takes_the_dotted_model_override_keys(capsys):
    assert main(["profile", "--model", "paper-se", "--set", "model.overrides.kernel_size=5"]) == 0
    assert capsys.readouterr().out.startswith("paper-se kernel_size=5: input 3x56x56")
    assert main(["profile", "--set", "kernel_size=5"]) == 2  # train's grammar, not a second one
    assert "write model.overrides.kernel_size=..." in capsys.readouterr().err
