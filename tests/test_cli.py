"""The `condnet` command's conventions shared by every subcommand (`condnet.cli`)."""

from condnet.cli import main
from condnet.commands.common import split_set_options
from tests.helpers import small_run


def test_set_may_repeat_and_come_before_or_after_the_positional_arguments():
    assert split_set_options(["evaluate", "--set", "a=1", "b=2", "CKPT", "--json"]) == [
        *("evaluate", "--set", "a=1", "--set", "b=2", "CKPT", "--json"),
    ]
    assert split_set_options(["evaluate", "CKPT", "--set", "a=1", "--set", "b=2"]) == [
        *("evaluate", "CKPT", "--set", "a=1", "--set", "b=2"),
    ]
    assert split_set_options(["train", "--set", "a=1", "--out", "x=y"])[-2:] == ["--out", "x=y"]


def test_evaluate_takes_its_checkpoint_after_set(tmp_path, capsys):
    """`--set` used to swallow the checkpoint: "the following arguments are required"."""
    run = small_run(tmp_path)
    checkpoint = str(run / "last.pt")
    assert main(["evaluate", "--set", "data.synthetic_images=96", checkpoint, "--json"]) == 0
    assert '"checkpoint"' in capsys.readouterr().out
    assert main(["evaluate", checkpoint, "--set", "train.eval_batch_size=32", "run.threads=1"]) == 0
