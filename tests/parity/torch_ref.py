#!/usr/bin/python3
"""PyTorch reference for ptc's models: the outside oracle for losses,
gradients and AdamW trajectories.

Runs with Debian's python3-torch (/usr/bin/python3).  The models are written
here in plain functional torch, following the Hugging Face conventions the
.ptg files follow (tanh GELU, LayerNorm/RMSNorm eps 1e-5, rotate-half RoPE
with theta 10000, SwiGLU, padded vocabulary masked out of the loss), with
ptc's parameter names and layouts (linear weights are [in, out]: y = x @ W).

Subcommands:
  init   MODEL CFG OUT.safetensors SEED   write random initial weights
  tokens OUT.bin N VOCAB SEED             write an llm.c token file
  train  MODEL CFG W.safetensors TOK.bin STEPS LR OUT.json [--sgd]
         [--device cpu|cuda] [--dtype float64|float32]
         train STEPS steps from W on TOK.bin (ptc's batching rule) and write
         {"losses": [...], "grads": {name: [...]}} (grads of the first step)
         at a constant LR (ptrun's `--warmup 0 --min-lr LR --lr LR`).  The
         defaults, cpu and float64, are the oracle; `--device cuda --dtype
         float32` runs the same computation on a GPU in IEEE float32 (TF32
         off), a reference for ptrun's CUDA runs.
  check-grads W0 W1 LR REF.json TOL
         ptrun's gradients are (W0 - W1) / LR after one SGD step (no
         momentum, decay or clipping); each must satisfy |a - b| <= TOL |b|.
         A large power-of-two LR keeps f32 cancellation out of the result.
  check-losses LOG.jsonl REF.json TOL
         per-step losses of ptrun's log against the reference, relative TOL
"""
import json
import math
import struct
import sys

import torch

torch.set_default_dtype(torch.float64)

# --------------------------------------------------------------- safetensors
DT = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "I32": (torch.int32, 4)}


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, size = DT[info["dtype"]]
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=dt)
        out[name] = t.reshape(info["shape"]).to(torch.float64)
    return out


# --------------------------------------------------------------- token files
def write_tokens(path, tokens):
    header = [0] * 256
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))


def read_tokens(path):
    with open(path, "rb") as f:
        raw = f.read()
    header = struct.unpack("<256i", raw[:1024])
    assert header[0] == 20240520 and header[1] == 1
    n = header[2]
    return list(struct.unpack("<%dH" % n, raw[1024:1024 + 2 * n]))


def batch(tokens, step, B, T):
    """ptc's rule (DESIGN.md): row b of step s (0-based) reads the T+1
    tokens that start at ((s*B + b)*T) mod (N - T - 1)."""
    n = len(tokens)
    rows = []
    for b in range(B):
        start = ((step * B + b) * T) % (n - T - 1)
        rows.append(tokens[start:start + T + 1])
    t = torch.tensor(rows, dtype=torch.long)
    return t[:, :-1], t[:, 1:]


# --------------------------------------------------------------- models
def cfg_dict(text):
    d = {}
    for kv in text.split(","):
        k, v = kv.split("=")
        d[k] = float(v) if "." in v or "e" in v else int(v)
    return d


GPT2_DEFAULT = dict(vocab=50304, ctx=1024, layers=12, dim=768, heads=12, batch=8, seq=1024)
LLAMA_DEFAULT = dict(vocab=32000, dim=4096, layers=32, heads=32, kv_heads=32, ffn=11008,
                     ctx=4096, batch=1, seq=4096)


def gpt2_shapes(c):
    d, v = c["dim"], c["vocab"]
    s = {"wte": ([v, d], "normal", 0.02), "wpe": ([c["ctx"], d], "normal", 0.02)}
    res = 0.02 / math.sqrt(2 * c["layers"])
    for i in range(c["layers"]):
        p = "h%d." % i
        s.update({
            p + "ln1.g": ([d], "ones", 0), p + "ln1.b": ([d], "zeros", 0),
            p + "attn.qkv.w": ([d, 3 * d], "normal", 0.02), p + "attn.qkv.b": ([3 * d], "zeros", 0),
            p + "attn.proj.w": ([d, d], "normal", res), p + "attn.proj.b": ([d], "zeros", 0),
            p + "ln2.g": ([d], "ones", 0), p + "ln2.b": ([d], "zeros", 0),
            p + "mlp.fc.w": ([d, 4 * d], "normal", 0.02), p + "mlp.fc.b": ([4 * d], "zeros", 0),
            p + "mlp.proj.w": ([4 * d, d], "normal", res), p + "mlp.proj.b": ([d], "zeros", 0),
        })
    s.update({"lnf.g": ([d], "ones", 0), "lnf.b": ([d], "zeros", 0)})
    return s


def llama_shapes(c):
    d, hd = c["dim"], c["dim"] // c["heads"]
    kv = c["kv_heads"] * hd
    res = 0.02 / math.sqrt(2 * c["layers"])
    s = {"embed": ([c["vocab"], d], "normal", 0.02)}
    for i in range(c["layers"]):
        p = "h%d." % i
        s.update({
            p + "attn_norm": ([d], "ones", 0), p + "attn.q.w": ([d, d], "normal", 0.02),
            p + "attn.k.w": ([d, kv], "normal", 0.02), p + "attn.v.w": ([d, kv], "normal", 0.02),
            p + "attn.o.w": ([d, d], "normal", res), p + "mlp_norm": ([d], "ones", 0),
            p + "mlp.gate.w": ([d, c["ffn"]], "normal", 0.02),
            p + "mlp.up.w": ([d, c["ffn"]], "normal", 0.02),
            p + "mlp.down.w": ([c["ffn"], d], "normal", res),
        })
    s.update({"norm": ([d], "ones", 0), "lm_head.w": ([d, c["vocab"]], "normal", 0.02)})
    return s


def attention(q, k, v):
    # q [B,T,H,D], k/v [B,T,G,D] -> [B,T,H,D], causal, GQA by repetition
    h, g = q.shape[2], k.shape[2]
    k = k.repeat_interleave(h // g, dim=2)
    v = v.repeat_interleave(h // g, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def cross_entropy(logits, targets, classes):
    logits = logits[..., :classes]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, classes), targets.reshape(-1))


def gpt2_loss(w, c, tok, tgt):
    B, T = tok.shape
    d, H = c["dim"], c["heads"]
    ln = lambda x, g, b: torch.nn.functional.layer_norm(x, (d,), g, b, 1e-5)
    x = w["wte"][tok] + w["wpe"][:T]
    for i in range(c["layers"]):
        p = "h%d." % i
        a = ln(x, w[p + "ln1.g"], w[p + "ln1.b"])
        # columns grouped by head: [heads, 3, head_dim] (models/gpt2.ptg)
        qkv = (a @ w[p + "attn.qkv.w"] + w[p + "attn.qkv.b"]).reshape(B, T, H, 3, d // H)
        o = attention(qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2])
        x = x + o.reshape(B, T, d) @ w[p + "attn.proj.w"] + w[p + "attn.proj.b"]
        m = ln(x, w[p + "ln2.g"], w[p + "ln2.b"])
        h = torch.nn.functional.gelu(m @ w[p + "mlp.fc.w"] + w[p + "mlp.fc.b"], approximate="tanh")
        x = x + h @ w[p + "mlp.proj.w"] + w[p + "mlp.proj.b"]
    logits = ln(x, w["lnf.g"], w["lnf.b"]) @ w["wte"].T
    return cross_entropy(logits, tgt, min(c["vocab"], 50257))


def rmsnorm(x, g, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rope(x, theta=10000.0):
    # rotate-half, positions 0..T-1, x [B,T,H,D]; angles in float64, then
    # rounded to x's dtype
    T, D = x.shape[1], x.shape[3]
    inv = theta ** (-torch.arange(0, D // 2, dtype=torch.float64, device=x.device) * 2 / D)
    ang = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    if x.dtype != torch.float64:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def llama_loss(w, c, tok, tgt):
    B, T = tok.shape
    d, H, G = c["dim"], c["heads"], c["kv_heads"]
    hd = d // H
    x = w["embed"][tok]
    for i in range(c["layers"]):
        p = "h%d." % i
        a = rmsnorm(x, w[p + "attn_norm"])
        q = rope((a @ w[p + "attn.q.w"]).reshape(B, T, H, hd))
        k = rope((a @ w[p + "attn.k.w"]).reshape(B, T, G, hd))
        v = (a @ w[p + "attn.v.w"]).reshape(B, T, G, hd)
        x = x + attention(q, k, v).reshape(B, T, d) @ w[p + "attn.o.w"]
        m = rmsnorm(x, w[p + "mlp_norm"])
        x = x + (torch.nn.functional.silu(m @ w[p + "mlp.gate.w"]) * (m @ w[p + "mlp.up.w"])) @ w[p + "mlp.down.w"]
    logits = rmsnorm(x, w["norm"]) @ w["lm_head.w"]
    return cross_entropy(logits, tgt, c["vocab"])


MODELS = {"gpt2": (GPT2_DEFAULT, gpt2_shapes, gpt2_loss),
          "llama": (LLAMA_DEFAULT, llama_shapes, llama_loss)}


def config(model, text):
    c = dict(MODELS[model][0])
    c.update(cfg_dict(text))
    return c


def cmd_init(model, cfgtext, out, seed):
    c = config(model, cfgtext)
    g = torch.Generator().manual_seed(int(seed))
    w = {}
    for name, (shape, kind, std) in MODELS[model][1](c).items():
        if kind == "ones":
            w[name] = torch.ones(shape)
        elif kind == "zeros":
            w[name] = torch.zeros(shape)
        else:
            w[name] = torch.randn(shape, generator=g) * std
    save_safetensors(out, w)


def cmd_tokens(out, n, vocab, seed):
    g = torch.Generator().manual_seed(int(seed))
    toks = torch.randint(0, int(vocab), (int(n),), generator=g).tolist()
    write_tokens(out, toks)


DTYPES = {"float64": torch.float64, "float32": torch.float32}


def setup_device(device):
    """The torch.device for --device; on CUDA, float32 products in IEEE
    float32 (no TF32), with the API of the torch at hand."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        sys.exit("torch_ref: --device must be cpu or cuda, not %s" % device)
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        sys.exit("torch_ref: --device %s: CUDA is not available to this torch (%s)"
                 % (device, torch.__version__))

    def has(obj, name):  # torch 1.x's backend modules raise AssertionError
        try:
            getattr(obj, name)
            return True
        except (AttributeError, AssertionError):
            return False

    matmul = torch.backends.cuda.matmul
    if has(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "ieee"
        for b in ("conv", "rnn"):
            sub = getattr(torch.backends.cudnn, b, None)
            if sub is not None and has(sub, "fp32_precision"):
                sub.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if hasattr(torch, "set_float32_matmul_precision"):
            torch.set_float32_matmul_precision("highest")
    return dev


def cmd_train(model, cfgtext, wpath, tokpath, steps, lr, out, sgd=False,
              device="cpu", dtype="float64"):
    dev, dt = setup_device(device), DTYPES[dtype]
    c = config(model, cfgtext)
    w = {k: v.to(device=dev, dtype=dt).clone().requires_grad_(True)
         for k, v in load_safetensors(wpath).items()}
    tokens = read_tokens(tokpath)
    names = sorted(w)
    decay = [w[n] for n in names if w[n].dim() >= 2]
    no_decay = [w[n] for n in names if w[n].dim() < 2]
    if sgd:
        opt = torch.optim.SGD([w[n] for n in names], lr=float(lr), momentum=0.0)
    else:
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=float(lr), betas=(0.9, 0.95), eps=1e-8)
    losses, grads = [], {}
    for s in range(int(steps)):
        tok, tgt = batch(tokens, s, c["batch"], c["seq"])
        if dev.type != "cpu":
            tok, tgt = tok.to(dev), tgt.to(dev)
        opt.zero_grad()
        loss = MODELS[model][2](w, c, tok, tgt)
        loss.backward()
        if s == 0:
            grads = {n: w[n].grad.reshape(-1).tolist() for n in names}
        if not sgd:
            torch.nn.utils.clip_grad_norm_([w[n] for n in names], 1.0)
        opt.step()
        losses.append(loss.item())
    with open(out, "w") as f:
        json.dump({"losses": losses, "grads": grads}, f)


def cmd_check_grads(w0path, w1path, lr, refpath, tol):
    w0, w1 = load_safetensors(w0path), load_safetensors(w1path)
    ref = json.load(open(refpath))["grads"]
    worst, bad = 0.0, []
    if sorted(ref) != sorted(w0):
        sys.exit("check-grads: parameter names differ: %s vs %s" % (sorted(ref), sorted(w0)))
    for name in sorted(ref):
        a = ((w0[name] - w1[name]) / float(lr)).reshape(-1)
        b = torch.tensor(ref[name])
        err = (a - b).norm().item() / max(b.norm().item(), 1e-30)
        worst = max(worst, err)
        if err > float(tol):
            bad.append("%s: relative error %.3g" % (name, err))
    print("check-grads: %d tensors, worst relative error %.3g (tolerance %s)" % (len(ref), worst, tol))
    if bad:
        sys.exit("check-grads: FAILED\n  " + "\n  ".join(bad))


def cmd_check_losses(logpath, refpath, tol):
    ref = json.load(open(refpath))["losses"]
    got = {}
    for line in open(logpath):
        rec = json.loads(line)
        if "step" in rec and "loss" in rec:
            got[rec["step"]] = rec["loss"]
    worst, bad = 0.0, []
    for i, want in enumerate(ref):
        have = got.get(i + 1)
        if have is None:
            bad.append("step %d: no loss in %s" % (i + 1, logpath))
            continue
        err = abs(have - want) / abs(want)
        worst = max(worst, err)
        print("  step %2d  ptrun %.7f  torch %.7f  rel %.2e" % (i + 1, have, want, err))
        if err > float(tol):
            bad.append("step %d: %.7f vs %.7f (relative %.3g)" % (i + 1, have, want, err))
    print("check-losses: %d steps, worst relative error %.3g (tolerance %s)" % (len(ref), worst, tol))
    if bad:
        sys.exit("check-losses: FAILED\n  " + "\n  ".join(bad))


def take_option(a, name, default):
    """Removes `--name VALUE` or `--name=VALUE` from the list a; returns VALUE
    (the last one given) or default."""
    value, i = default, 0
    while i < len(a):
        if a[i] == "--" + name:
            if i + 1 == len(a):
                sys.exit("torch_ref: --%s needs a value" % name)
            value = a[i + 1]
            del a[i:i + 2]
        elif a[i].startswith("--" + name + "="):
            value = a[i].split("=", 1)[1]
            del a[i]
        else:
            i += 1
    return value


if __name__ == "__main__":
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    device = take_option(a, "device", "cpu")  # cpu, cuda or cuda:N
    dtype = take_option(a, "dtype", "float64")
    if dtype not in DTYPES:
        sys.exit("torch_ref: --dtype must be float64 or float32, not %s" % dtype)
    if a[0] == "init":
        cmd_init(*a[1:5])
    elif a[0] == "tokens":
        cmd_tokens(*a[1:5])
    elif a[0] == "train":
        cmd_train(*a[1:8], sgd="--sgd" in a, device=device, dtype=dtype)
    elif a[0] == "check-grads":
        cmd_check_grads(*a[1:6])
    elif a[0] == "check-losses":
        cmd_check_losses(*a[1:4])
    else:
        sys.exit(__doc__)
