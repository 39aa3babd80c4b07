"""Classify a camera, a video file or a stream live with any edgeres artifact.

    python examples/camera_demo.py out/resnet18_x86_int8 0                 # camera 0, in a window
    python examples/camera_demo.py out/resnet18_x86_int8 clip.mp4 --out results   # headless
    python examples/camera_demo.py out/resnet18_rpi5_int8 picamera --out results  # the Pi camera (Picamera2)
    python examples/camera_demo.py out/resnet18_jetson_int8 csi:0          # a Jetson CSI camera (GStreamer)

The same as `edgeres video ARTIFACT --source SOURCE [--headless --out DIR]`.
"""

import argparse
from pathlib import Path

import edgeres
from edgeres.video import classify_video, window_show

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("artifact")
parser.add_argument("source", help="camera index, /dev/videoN, picamera, csi:N, gst-usb:/dev/videoN, gst:PIPELINE, "
                    "video file or stream URL")
parser.add_argument("--out", type=Path, help="write annotated.mp4 and per-frame results here instead of a window")
parser.add_argument("--max-frames", type=int)
args = parser.parse_args()

classifier = edgeres.Classifier(args.artifact)
summary = classify_video(classifier, args.source, out_dir=args.out, max_frames=args.max_frames,
                         show=None if args.out else window_show())
print(f"{summary.frames_classified}/{summary.frames_read} frames classified, "
      f"{summary.fps_mean:.1f} FPS mean, {summary.fps_p5:.1f} FPS p5, {summary.frames_dropped} dropped")
