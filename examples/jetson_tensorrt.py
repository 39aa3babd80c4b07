"""Jetson with TensorRT: convert on a PC, build the engine on the Jetson, classify.

    edgeres convert model.pth --arch resnet18 --target jetson --int8 --calib calib/ --out out   # on the PC
    edgeres build-engine out/resnet18_jetson_int8/resnet18_jetson_int8.onnx                 # on the Jetson (minutes, once)
    python examples/jetson_tensorrt.py out/resnet18_jetson_int8/resnet18_jetson_int8.onnx photo.jpg

On a Jetson (TensorRT importable) the engine is built beside the ONNX on first use and run
with TensorRT; elsewhere the same ONNX runs with ONNX Runtime (TensorRT or CUDA provider if present).
"""

import importlib.util
import sys

import cv2

import edgeres

on_tensorrt = importlib.util.find_spec("tensorrt") is not None
classifier = edgeres.Classifier(sys.argv[1], tensorrt_engine=on_tensorrt)
print(classifier.predict(cv2.imread(sys.argv[2]), topk=1)[0], "via", classifier.backend_name)
