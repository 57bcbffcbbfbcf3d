"""Training-side code: PyTorch models, checkpoint import, ONNX export to bundles. Needs the [export] extra."""
