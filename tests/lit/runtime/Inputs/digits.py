#!/usr/bin/env python3
"""digits.py OUT N -- a safetensors file with N rows of a learnable toy
problem for the MLP: images f32[N, 16] whose first 4 pixels spell the label
(i32[N], 0..3) in one-hot, the rest noise."""
import json
import random
import struct
import sys

out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
images, labels = [], []
for i in range(n):
    y = rng.randrange(4)
    row = [rng.uniform(-0.1, 0.1) for _ in range(16)]
    row[y] += 1.0
    images += row
    labels.append(y)
img = struct.pack("<%df" % len(images), *images)
lab = struct.pack("<%di" % len(labels), *labels)
header = {
    "images": {"dtype": "F32", "shape": [n, 16], "data_offsets": [0, len(img)]},
    "labels": {"dtype": "I32", "shape": [n], "data_offsets": [len(img), len(img) + len(lab)]},
}
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + img + lab)
