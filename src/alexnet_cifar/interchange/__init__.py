"""The model outside this package: Keras files read and written (``keras_files``, ``keras_io``),
ONNX and TorchScript exports (``export``) and predictions on image files (``predict``)."""
