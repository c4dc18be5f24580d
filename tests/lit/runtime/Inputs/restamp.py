#!/usr/bin/env python3
"""restamp.py PLAN -- rewrites PLAN/manifest.json so every listed file's
size and SHA-256 match the file as it is now.  The runtime tests use it to
make a plan whose checksums are right but whose IR is wrong, the one damage
the checksums cannot catch."""
import hashlib
import json
import os
import sys

plan = sys.argv[1]
path = os.path.join(plan, "manifest.json")
with open(path) as f:
    man = json.load(f)
for entry in man["files"]:
    with open(os.path.join(plan, entry["name"]), "rb") as f:
        data = f.read()
    entry["bytes"] = len(data)
    entry["sha256"] = hashlib.sha256(data).hexdigest()
with open(path, "w") as f:
    json.dump(man, f, indent=2)
    f.write("\n")
