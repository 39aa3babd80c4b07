"""Classify images with MediaPipe Tasks' ImageClassifier; run by the MediaPipe venv's Python.

    python mediapipe_classify.py MODEL.tflite LEFT,TOP,RIGHT,BOTTOM IMAGE...

Prints a JSON list of [index, label] per image. Each image is classified on the region of
interest given as fractions of the image (edgeres' `Preprocess.crop_box`: what edgeres' crop
shows), or on the whole image for 0,0,1,1.
No edgeres import: this is a client that knows only MediaPipe and the file.
"""

import json
import sys

import cv2
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python.components.containers.rect import RectF
from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions, ImageProcessingOptions


def main(model: str, box: str, *images: str) -> None:
    left, top, right, bottom = map(float, box.split(","))
    region = ImageProcessingOptions(region_of_interest=RectF(left=left, top=top, right=right, bottom=bottom))
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=1)
    answers = []
    with ImageClassifier.create_from_options(options) as classifier:
        for path in images:
            rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), region)
            best = result.classifications[0].categories[0]
            answers.append([best.index, best.category_name])
    print(json.dumps(answers))


if __name__ == "__main__":
    main(*sys.argv[1:])
