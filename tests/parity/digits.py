#!/usr/bin/python3
"""digits.py -- the MLP learns real handwriting.

  digits.py data DIR         write DIR/train.safetensors and DIR/test.safetensors
                             from scikit-learn's 8x8 digits (1797 images,
                             shipped offline with python3-sklearn): a fixed
                             shuffle, 1497 rows to train, 300 held out
  digits.py accuracy W DIR   accuracy of the MLP with weights W on the
                             held-out rows; exits 1 below 90%

Runs with Debian's /usr/bin/python3 (python3-sklearn, python3-torch).
"""
import sys

import torch
from sklearn.datasets import load_digits

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import torch_ref  # noqa: E402  (safetensors reader and writer)


def write(path, x, y):
    import json
    import struct
    tensors = [("images", "F32", list(x.shape), x.to(torch.float32).numpy().tobytes()),
               ("labels", "I32", list(y.shape), y.to(torch.int32).numpy().tobytes())]
    header, off = {}, 0
    for name, dt, shape, data in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for t in tensors:
            f.write(t[3])


def data(out):
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float64) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    write(out + "/train.safetensors", x[:1497], y[:1497])
    write(out + "/test.safetensors", x[1497:], y[1497:])


def accuracy(wpath, out):
    w = torch_ref.load_safetensors(wpath)
    t = torch_ref.load_safetensors(out + "/test.safetensors")
    x, y = t["images"], t["labels"].long()
    h = torch.relu(x @ w["fc1.w"] + w["fc1.b"])
    h = torch.relu(h @ w["fc2.w"] + w["fc2.b"])
    pred = (h @ w["out.w"] + w["out.b"]).argmax(-1)
    acc = (pred == y).double().mean().item()
    print("digits: held-out accuracy %.1f%% (%d images)" % (100 * acc, len(y)))
    if acc < 0.9:
        sys.exit("digits: accuracy below 90%")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "data":
        data(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "accuracy":
        accuracy(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
