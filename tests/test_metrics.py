"""Top-k accuracy and the metrics files (`condnet.engine.metrics`)."""

import csv
import json

import pytest
import torch

from condnet.engine.metrics import FIELDS, MetricsLog, correct_topk, read_metrics, truncate_metrics


def ranks(logits: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Each label's place in its row, 1 for the largest logit, counted one example at a time."""
    rows = zip(logits.tolist(), labels.tolist(), strict=True)
    return [1 + sum(v > row[label] for v in row) for row, label in rows]


def test_top_k_counts_labels_ranked_within_k():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 10, generator=generator)  # 10 classes: top-5 is not every class
    labels = torch.randint(0, 10, (400,), generator=generator)
    places = ranks(logits, labels)
    expected = [sum(p <= k for p in places) for k in (1, 2, 5, 9)]
    assert 0 < expected[0] < expected[1] < expected[2] < expected[3] < 400
    assert correct_topk(logits, labels, (1, 2, 5, 9)).tolist() == expected
    assert correct_topk(logits, labels).tolist() == [expected[0], expected[2]]  # (1, 5)


def test_top_k_by_hand():
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: first
            [9.0, 8, 2, 3, 4, 5, 6],  # label 1: second
            [9.0, 8, 7, 6, 5, 1, 4],  # label 4: fifth
            [9.0, 8, 7, 6, 5, 1, 4],  # label 6: sixth
            [9.0, 8, 7, 6, 5, 1, 4],  # label 5: last
        ]
    )
    labels = torch.tensor([0, 1, 4, 6, 5])
    assert correct_topk(logits, labels).tolist() == [1, 3]
    # Padding rows (label -100) are never a hit; fewer classes than k: every real row is one.
    assert correct_topk(logits[:, :3], torch.tensor([2, 0, -100, 1, -100])).tolist() == [1, 3]


def test_metrics_files_hold_one_row_per_epoch_and_truncate(tmp_path):
    log = MetricsLog(tmp_path)
    records = [{key: float(epoch) for key in FIELDS} | {"epoch": epoch} for epoch in (1, 2, 3)]
    for record in records:
        log.append(record | {"precision": "fp32"})
    log.close()
    assert read_metrics(tmp_path) == [r | {"precision": "fp32"} for r in records]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert list(rows[0]) == list(FIELDS) and [r["epoch"] for r in rows] == ["1", "2", "3"]
    truncate_metrics(tmp_path, 2)  # a run resumed after epoch 2 rewrites what came after
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert read_metrics(tmp_path / "elsewhere") == []


def test_metrics_written_counting_epochs_from_0_are_read_counting_from_1(tmp_path):
    """Runs from before epochs counted from 1 still read, report and resume alike."""
    old = [{"epoch": epoch, "val_top1": 10.0 * epoch} for epoch in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert [(r["epoch"], r["val_top1"]) for r in read_metrics(tmp_path)] == [
        (1, 0.0),
        (2, 10.0),
        (3, 20.0),
    ]
    truncate_metrics(tmp_path, 2)  # rewritten counting from 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.parametrize("k", [1, 5])
def test_a_label_outside_the_classes_is_never_a_hit(k):
    logits = torch.randn(3, 10)
    assert correct_topk(logits, torch.full((3,), -100), (k,)).tolist() == [0]
