#!/usr/bin/env python3
"""compare_grads.py W0 W1_REF W1_TEST LR TOL -- two backends' SGD steps.

W1_REF and W1_TEST are the parameters after one plain SGD step at rate LR
from W0 (safetensors, f32), on two backends (the CPU's and a GPU's); each
parameter's gradient is (W0 - W1) / LR.  Prints one line per tensor with
the relative error of the test gradient, |g_test - g_ref| / |g_ref| (2-norms
over the tensor), and fails (exit 1) when any exceeds TOL.  Needs only the
Python standard library."""
import json
import math
import struct
import sys
from array import array


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {t['dtype']}, not F32")
        a, b = t["data_offsets"]
        out[name] = array("f", data[a:b])
    return out


def main():
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    w0, ref, test = (load(p) for p in sys.argv[1:4])
    lr, tol = float(sys.argv[4]), float(sys.argv[5])
    worst, bad = 0.0, []
    for name in sorted(w0):
        if name not in ref or name not in test:
            raise SystemExit(f"compare_grads: {name} is missing from one of the files")
        num = den = 0.0
        for x0, r, t in zip(w0[name], ref[name], test[name]):
            gr, gt = (x0 - r) / lr, (x0 - t) / lr
            num += (gt - gr) ** 2
            den += gr * gr
        err = math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)
        worst = max(worst, err)
        print(f"  {name:12s} {len(w0[name]):7d} elements  relative error {err:.2e}")
        if not err <= tol:
            bad.append(name)
    print(f"compare-grads: {len(w0)} tensors, worst relative error {worst:.2e} (tolerance {tol:g})")
    if bad:
        print("compare-grads: over the tolerance: " + ", ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
