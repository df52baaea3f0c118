"""Which ONNX form of a depthwise CondConv runs fastest in ONNX Runtime (batch 64, 2 threads).

    python benchmarks/onnx_depthwise_forms.py

Three exact forms with a dynamic batch axis, one depthwise layer shape of paper-condconv at 56 px
per line: the mixture of four expert convolutions (what `condnet export` writes), one
convolution with four outputs per channel then a weighted sum over them, and nine shifted
multiply-adds with the mixed per-example kernels. Minimum of 7 runs; err: the largest
difference from the mixture computed by PyTorch.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condnet.timing import time_call  # noqa: E402

M = 4


class Form(torch.nn.Module):
    """One exact form: the experts `w` (M, C, 1, 3, 3) and the stride; forward(x, r)."""

    def __init__(s, w, stride):
        super().__init__()
        s.w = torch.nn.Parameter(w)
        s.s = stride


class Mixture(Form):
    def forward(s, x, r):
        out = None
        for m in range(M):
            t = F.conv2d(x, s.w[m], None, s.s, 1, groups=x.shape[1]) * r[:, m, None, None, None]
            out = t if out is None else out + t
        return out


class Multiplier(Form):
    def forward(s, x, r):
        C = x.shape[1]
        w = s.w.transpose(0, 1).reshape(-1, 1, 3, 3)  # four output channels per channel
        y = F.conv2d(x, w, None, s.s, 1, groups=C)
        y = y.reshape(y.shape[0], C, M, y.shape[2], y.shape[3])
        return (y * r[:, None, :, None, None]).sum(2)


class Taps(Form):
    def forward(s, x, r):
        k = (r @ s.w.reshape(M, -1)).reshape(x.shape[0], x.shape[1], 3, 3)
        xp = F.pad(x, (1, 1, 1, 1))
        H, W = x.shape[2], x.shape[3]
        st = s.s
        Ho, Wo = (H - 1) // st + 1, (W - 1) // st + 1
        out = None
        for i in range(3):
            for j in range(3):
                t = (
                    xp[:, :, i : i + st * (Ho - 1) + 1 : st, j : j + st * (Wo - 1) + 1 : st]
                    * k[:, :, i, j, None, None]
                )
                out = t if out is None else out + t
        return out


def main() -> None:
    torch.manual_seed(0)
    B = 64
    folder = tempfile.mkdtemp(prefix="condnet-onnx-forms-")
    for C, H, st in [(64, 56, 1), (96, 56, 2), (160, 28, 1), (320, 14, 1), (640, 7, 1)]:
        w = torch.randn(M, C, 1, 3, 3)
        x = torch.randn(B, C, H, H)
        r = torch.rand(B, M)
        res = {}
        ref = Mixture(w, st)(x, r)
        for name, cls in (("mixture", Mixture), ("multiplier", Multiplier), ("taps", Taps)):
            mod = cls(w, st).eval()
            path = f"{folder}/{name}.onnx"
            torch.onnx.export(
                mod,
                (x[:2], r[:2]),
                path,
                input_names=["x", "r"],
                output_names=["y"],
                dynamic_axes={"x": {0: "b"}, "r": {0: "b"}, "y": {0: "b"}},
                dynamo=False,
                opset_version=17,
            )
            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy(), "r": r.numpy()}
            out = sess.run(None, feed)[0]
            err = np.abs(out - ref.detach().numpy()).max()
            fastest = time_call(lambda: sess.run(None, feed), runs=7, warmup=0).fastest  # noqa: B023
            res[name] = (fastest * 1e3, err)
        print(
            (C, H, st), {k: f"{v[0]:.1f} ms (err {v[1]:.1e})" for k, v in res.items()}, flush=True
        )


if __name__ == "__main__":
    main()
