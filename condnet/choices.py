"""The choices the command line offers, defined here, with no heavy imports, so that building
the `condnet` parser (and `condnet --help`) never imports torch. The modules that use them
import them from here."""

FORMULATIONS = ("auto", "grouped", "batched")  # CondConv2d.formulation
BENCH_BACKENDS = ("eager", "fused", "compile", "onnxruntime")
DEVICES = ("cpu", "cuda")
RUN_DEVICES = ("auto", "cpu", "cuda")
OPSET, MAX_OPSET = 17, 20  # ONNX opsets the TorchScript exporter writes: the default, the newest
CHECK_BATCHES = (1, 7, 64)  # the batch sizes `condnet export --check` compares
CHECK_TOLERANCE = 1e-4
WEIGHTS_SUFFIX = ".safetensors"  # condnet export --weights, read back by suffix or content
