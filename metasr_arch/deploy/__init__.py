"""Deployment: a Meta-SR network frozen at one request (``frozen``) and exported to ONNX, TorchScript or
``torch.export`` programs with a numerical check (``export``)."""
