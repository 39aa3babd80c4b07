"""x86 with OpenVINO: convert once, then classify with the uniform runtime.

    edgeres convert model.pth --arch resnet18 --target x86 --int8 --calib calib/ --out out
    python examples/x86_openvino.py out/resnet18_x86_int8 photo.jpg
"""

import sys

import cv2

import edgeres

classifier = edgeres.Classifier(sys.argv[1], threads=2)  # OpenVINO backend, chosen from .xml
print(classifier.predict(cv2.imread(sys.argv[2]), topk=1)[0])
