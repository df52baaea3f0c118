# A/B of the fused mix-in-cache 1x1 kernel (native.per_example_pointwise) against mixing
# all kernels then one batched matmul, over the 1x1 shapes of paper-condconv at 56 px.
# python benchmarks/pointwise_fused_ab.py 64 infer|train
import time, torch, statistics, sys
from condnet.memory import retain_freed_memory

retain_freed_memory()
from condnet.models import native

native.kernel()
cl = torch.channels_last
B, M = int(sys.argv[1]), 4
train = sys.argv[2] == "train"
shapes = [
    (16, 64, 56),
    (64, 24, 56),
    (24, 96, 56),
    (96, 40, 28),
    (40, 160, 28),
    (160, 40, 28),
    (160, 80, 14),
    (80, 320, 14),
    (320, 80, 14),
    (320, 160, 7),
    (160, 640, 7),
    (640, 160, 7),
    (640, 320, 7),
]
res = {s: {"native": [], "bmm": []} for s in shapes}
for rnd in range(3):
    for Cin, Cout, H in shapes:
        x = torch.randn(B, Cin, H, H).contiguous(memory_format=cl)
        rows = x.permute(0, 2, 3, 1).reshape(B, H * H, Cin).requires_grad_(train)
        r = torch.rand(B, M, requires_grad=train)
        bias = torch.randn(Cout)
        e = torch.randn(M, Cin * Cout, requires_grad=train)
        fa = lambda: native.per_example_pointwise(rows, r, e, None if train else bias, Cout)
        fb = lambda: (
            torch.bmm(rows, (r @ e).reshape(B, Cin, Cout))
            if train
            else torch.baddbmm(bias, rows, (r @ e).reshape(B, Cin, Cout))
        )
        for name, f in (("native", fa), ("bmm", fb)):
            if train:
                g = torch.randn(B, H * H, Cout)

                def step(f=f):
                    rows.grad = r.grad = e.grad = None
                    f().backward(g)
            else:

                def step(f=f):
                    with torch.no_grad():
                        f()

            step()
            s = time.perf_counter()
            step()
            step()
            res[(Cin, Cout, H)][name].append((time.perf_counter() - s) / 2 * 1e3)
tot = {"native": 0, "bmm": 0}
for s, d in res.items():
    med = {k: statistics.median(v) for k, v in d.items()}
    for k in tot:
        tot[k] += med[k]
    print(s, {k: round(v, 2) for k, v in med.items()})
print("total", {k: round(v, 1) for k, v in tot.items()})
