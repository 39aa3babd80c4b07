"""Classify images with MediaPipe Tasks' ImageClassifier; run by the MediaPipe venv's Python.

    python mediapipe_classify.py MODEL.tflite CROP_FRACTION IMAGE...

Prints a JSON list of [index, label] per image. Each image is classified on its centre
square of side CROP_FRACTION x its shorter side (edgeres' crop), as a region of interest.
No edgeres import: this is a client that knows only MediaPipe and the file.
"""

import json
import sys

import cv2
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python.components.containers.rect import RectF
from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions, ImageProcessingOptions


def centre_square(height: int, width: int, fraction: float) -> RectF:
    side = min(height, width) * fraction
    return RectF(left=(width - side) / 2 / width, top=(height - side) / 2 / height,
                 right=(width + side) / 2 / width, bottom=(height + side) / 2 / height)


def main(model: str, fraction: str, *images: str) -> None:
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=1)
    answers = []
    with ImageClassifier.create_from_options(options) as classifier:
        for path in images:
            rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            region = ImageProcessingOptions(region_of_interest=centre_square(*rgb.shape[:2], float(fraction)))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), region)
            best = result.classifications[0].categories[0]
            answers.append([best.index, best.category_name])
    print(json.dumps(answers))


if __name__ == "__main__":
    main(*sys.argv[1:])
