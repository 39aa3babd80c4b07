"""An NPU's INT8 QDQ ONNX: hand it to the vendor's compiler, or check it here with ONNX Runtime.

    edgeres convert model.pth --arch resnet18 --target npu --int8 --calib calib/ --out out
    python examples/npu_onnx.py out/resnet18_npu_int8 photo.jpg
"""

import sys

import cv2

import edgeres

classifier = edgeres.Classifier(sys.argv[1])  # ONNX Runtime on the CPU; NPU runtimes load the same file
print(classifier.predict(cv2.imread(sys.argv[2]), topk=1)[0])
