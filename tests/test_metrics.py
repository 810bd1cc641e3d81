import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassJaccardIndex,
)

from polyhead.metrics import SegmentationMetrics


def test_matches_torchmetrics_over_several_batches():
    torch.manual_seed(0)
    k = 5
    ours = SegmentationMetrics(k, ignore_index=255)
    iou = MulticlassJaccardIndex(k, average=None, ignore_index=255)
    acc = MulticlassAccuracy(k, average="micro", ignore_index=255)
    ece = MulticlassCalibrationError(k, n_bins=15, norm="l1", ignore_index=255)
    for _ in range(3):
        probs = torch.softmax(torch.randn(2, k, 16, 16) * 3, dim=1)
        target = torch.randint(0, k, (2, 16, 16))
        target[:, :3] = 255
        target[0, 5, 5] = probs[0, :, 5, 5].argmax()
        ours.update(probs, target)
        iou.update(probs, target)
        acc.update(probs, target)
        ece.update(probs, target)
    got = ours.compute()
    torch.testing.assert_close(got["IoU"], iou.compute())
    torch.testing.assert_close(got["mIoU"], iou.compute().mean())
    torch.testing.assert_close(got["pixel_accuracy"], acc.compute())
    torch.testing.assert_close(got["ECE"], ece.compute(), atol=1e-6, rtol=0)


def test_absent_class_is_left_out_of_miou():
    m = SegmentationMetrics(3)
    probs = torch.zeros(1, 3, 2, 2)
    probs[:, 0] = 1.0
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    m.update(probs, target)
    out = m.compute()
    assert out["mIoU"] == 1.0 and torch.isnan(out["IoU"][1:]).all()
    assert out["ECE"] == 0.0  # confidence 1, all correct
