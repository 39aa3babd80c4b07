"""Raspberry Pi with LiteRT: convert on a PC, copy the .tflite (with its .edgeres.json and .golden.npz), classify on the Pi.

    edgeres convert model.pth --arch resnet18 --target rpi5 --int8 --calib calib/ --out out   # on the PC
    pip install 'edgeres[rpi]'                                                                # on the Pi
    edgeres verify out/resnet18_rpi5_int8                     # on the Pi: the runtime computes what it should
    python examples/rpi_tflite.py out/resnet18_rpi5_int8 photo.jpg
"""

import os
import sys

import cv2

import edgeres

classifier = edgeres.Classifier(sys.argv[1], threads=os.cpu_count())  # LiteRT + XNNPACK (.tflite); 4 on a Pi
print(classifier.predict(cv2.imread(sys.argv[2]), topk=1)[0])
