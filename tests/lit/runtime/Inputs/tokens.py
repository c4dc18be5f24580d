#!/usr/bin/env python3
"""tokens.py OUT KIND -- writes a (possibly broken) llm.c token file for the
data tests: good, magic, version, truncated, range (a token of 300),
empty, header (a header and no tokens)."""
import struct
import sys

out, kind = sys.argv[1], sys.argv[2]
tokens = [i % 250 for i in range(500)]
magic, version, count = 20240520, 1, len(tokens)
if kind == "magic":
    magic = 1234
if kind == "version":
    version = 2
if kind == "range":
    tokens[123] = 300
if kind == "header":
    tokens, count = [], 0
header = struct.pack("<256i", magic, version, count, *([0] * 253))
body = struct.pack("<%dH" % len(tokens), *tokens)
data = header + body
if kind == "truncated":
    data = data[:-10]
if kind == "empty":
    data = b""
with open(out, "wb") as f:
    f.write(data)
