"""Deployment: the inference form of a trained model, its files (safetensors, ONNX), prediction
and benchmarking. Public names are importable from `condnet` itself."""
