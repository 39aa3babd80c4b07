"""Classify one image with any edgeres artifact.

    python examples/classify_image.py out/resnet18_npu_int8 photo.jpg
"""

import sys

import cv2

import edgeres

classifier = edgeres.Classifier(sys.argv[1])
for prediction in classifier.predict(cv2.imread(sys.argv[2]), topk=3):
    print(f"{prediction.label:>20}  {prediction.probability:.3f}")
