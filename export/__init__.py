"""ONNX export built on embedhub (installed as ``embedhub.export``)."""
