"""Export side of bnserve: fold every BatchNorm layer into frozen weights and write one ONNX file."""
