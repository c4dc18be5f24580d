#!/usr/bin/env python3
"""torch_gpt2.py -- GPT-2 training steps in PyTorch on one GPU: the peer ptc's
CUDA runs are measured against.

The model is models/gpt2.ptg with its parameter shapes: tied token embedding
and lm head over the padded vocabulary (50304 rows; the loss masks the
columns past 50257 out), learned positions [ctx, dim], LayerNorm eps 1e-5,
tanh GELU, a fused q|k|v projection whose columns are grouped by head
([heads, 3, head_dim]), biases on every linear layer, linear weights stored
[in, out] (y = x @ W + b).  Training is ptc's default pipeline: AdamW (betas
0.9/0.95, eps 1e-8, weight decay 0.1 on the rank-2 parameters, none on gains
and biases), gradients clipped to a global norm of 1.0, a constant learning
rate (the rate does not change the step's cost).

PyTorch runs it the way a PyTorch user would for speed: bf16 autocast with
fp32 master weights and fp32 residual stream, F.scaled_dot_product_attention
(is_causal=True), fused AdamW (fused=True), and with --mode compile the model
(forward and loss; the backward through AOTAutograd) under torch.compile.

  python3 bench/gpu/torch_gpt2.py [--mode eager|compile] [--batch B] [--seq T]
          [--warmup W] [--steps S] [--data FILE] [--max-batch] [--profile]

Prints one JSON line (the last line of standard output):
  {"impl": "torch-eager"|"torch-compile", "B", "T", "tokens_per_s",
   "step_ms_median", "mfu", "flops_per_step", "peak_mem_gib", "torch",
   "device", ...}
or, when the run fails (torch.compile missing or failing, out of memory),
{"impl": ..., "error": "...", ...} and exit status 1.

Timing: W warm-up steps (torch.compile's compilation happens in them and is
reported as compile_s), then S steps back to back, timed with CUDA events
recorded between consecutive steps (so host-side gaps count), after a
torch.cuda.synchronize().  step_ms_median is the median of the S step
times; tokens_per_s = B*T / step_ms_median; wall_tokens_per_s is B*T*S over
the wall time of the S steps.

MFU = flops_per_step / step time / peak (--peak-tflops, default 989: H100
SXM dense bf16).  flops_per_step is ptc's "model FLOPs" of the same step,
ptc_func_flops (ir/ops.c) summed over the ops of the compiled @step, here
computed in closed form (ptc_gpt2_flops below; equal to `ptc
models/gpt2.ptg --batch B --seq T --report`'s "flops @step" exactly, e.g.
6641656776343 for B=8, T=1024, fp32 or --precision bf16).  What it counts:
  * every matmul as 2*m*n*k: per linear layer the forward x@W and the
    backward dX = dY@W^T and dW = X^T@dY, the lm head (x@wte^T over the
    padded 50304 columns) included: 6*N*(params in matrices) + 6*N*D*V
    (91% of the total for 124M at T=1024);
  * attention (causal: half the T*T scores) as scores*(4*hd + 5) forward
    (q.k^T, p.v, softmax) and scores*(10*hd + 10) backward (the scores
    q.k^T recomputed, dP, dV, dQ, dK, the softmax gradient) (8%);
  * the rest, 0.3%: elementwise ops per element (bias and residual adds 1,
    LayerNorm 8, its gradient 14, GELU 8, its gradient 14, bias gradients
    1 per summed element, cross-entropy 5 per logit forward and backward),
    the global-norm clipping (3 per parameter) and AdamW (12 per parameter).
No op is counted twice for recomputation (there is none here).  The count is
the same for any precision.

Data: random tokens drawn on the device from a fixed seed (no file needed),
or --data FILE, an llm.c token file read with ptc's batching rule (row b of
step s holds the T+1 tokens from ((s*B + b)*T) mod (N - T - 1)).

--max-batch tries B in 64, 48, 32, 24, 16, 12, 8, 4, largest first, each in a
child process of its own (an out-of-memory error is caught there, so one
failed size leaves nothing behind for the next), and prints the first that
fits: its benchmark line with "max_batch" and "tried".

--profile then runs 3 more steps under torch.profiler and prints its
key_averages table before the JSON: the 20 entries (aten ops and the CUDA
kernels they launch) with the most self GPU time.

For testing on a machine without a GPU: --device cpu and a tiny model
(--layers 2 --dim 64 --heads 4 --seq 32 --vocab 256); bf16 autocast on the
CPU where that torch has it (--amp none to leave it out), the attention
written out where F.scaled_dot_product_attention is missing (torch < 2.0).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback

MAX_BATCH_TRIES = (64, 48, 32, 24, 16, 12, 8, 4)


# --------------------------------------------------------------- FLOPs
def ptc_gpt2_flops(B, T, L, D, H, V, ctx):
    """ptc_func_flops of ptc's training step for models/gpt2.ptg (default
    pipeline: autodiff, AdamW, clipping): returns (total, matmul, attention)."""
    N, hd = B * T, D // H
    # matmuls: 3 per linear layer (forward, dX, dW) and 3 for the lm head
    per_layer_mm = 2 * N * D * (3 * D) + 2 * N * D * D + 2 * (2 * N * D * (4 * D))
    matmul = 3 * L * per_layer_mm + 3 * (2 * N * D * V)
    # attention (causal: half of the T*T scores per head)
    scores = 0.5 * B * H * T * T
    attention = L * scores * ((4 * hd + 5) + (10 * hd + 10))
    # forward elementwise: embedding add; per layer LayerNorm (8) x2, bias
    # adds (3D, D, 4D, D), residual adds (D, D), GELU (8 x 4D); final
    # LayerNorm, cross-entropy (5 per logit)
    fwd = N * D + L * N * (2 * 8 * D + (3 + 1 + 4 + 1) * D + 2 * D + 8 * 4 * D) \
        + 8 * N * D + 5 * N * V
    # backward elementwise: cross-entropy gradient (5 per logit), final
    # LayerNorm gradient (14); per layer bias gradients (sums: D, 4D, D, 3D),
    # GELU gradient (14 x 4D), LayerNorm gradients (14) x2, residual adds
    # (D, D); the wpe gradient's sum over the batch (D), the embedding
    # gradient (D), the add of the tied wte's two gradients (V*D)
    bwd = 5 * N * V + 14 * N * D \
        + L * N * ((1 + 4 + 1 + 3) * D + 14 * 4 * D + 2 * 14 * D + 2 * D) \
        + 2 * N * D + V * D
    # optimizer: per parameter g*g and its sum (2), the clip scaling (1),
    # AdamW (12); a scalar add per tensor but the first, then sqrt, +eps,
    # max, div
    params = V * D + ctx * D + L * (12 * D * D + 13 * D) + 2 * D
    tensors = 12 * L + 4
    opt = 15 * params + (tensors - 1) + 4
    return matmul + attention + fwd + bwd + opt, matmul, attention


# --------------------------------------------------------------- output, arguments
def emit(rec):
    print(json.dumps(rec), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("eager", "compile"), default="eager")
    p.add_argument("--batch", "-B", type=int, default=16)
    p.add_argument("--seq", "-T", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50304, help="padded vocabulary (rows of wte)")
    p.add_argument("--ctx", type=int, default=1024, help="rows of wpe")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="llm.c token file (default: random tokens)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16",
                   help="bf16 autocast (default) or plain fp32")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile's mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--no-fused", action="store_true", help="AdamW without fused=True")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak the MFU is stated against (H100 SXM dense bf16: 989)")
    p.add_argument("--max-batch", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--child-timeout", type=float, default=1800,
                   help="--max-batch: seconds one batch size may take")
    a = p.parse_args(argv)
    if a.dim % a.heads:
        p.error("--dim must be a multiple of --heads")
    if a.seq > a.ctx:
        p.error("--seq must not exceed --ctx")
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps >= 1, --warmup >= 0")
    return a


def base_record(a, torch=None):
    rec = {"impl": "torch-" + a.mode, "B": a.batch, "T": a.seq}
    if torch is not None:
        rec["torch"] = torch.__version__
    return rec


def is_oom(torch, e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg  # CUDA, CPU


# --------------------------------------------------------------- model
def build(a, torch):
    nn, F = torch.nn, torch.nn.functional
    D, H, L, V = a.dim, a.heads, a.layers, a.vocab
    hd, classes = D // H, min(V, 50257)
    sdpa = getattr(F, "scaled_dot_product_attention", None)

    def attend(q, k, v):  # [B, H, T, hd] each
        if sdpa is not None:
            return sdpa(q, k, v, is_causal=True)
        T = q.shape[2]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return s.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype) @ v

    def normal(*shape, std=0.02):
        return nn.Parameter(torch.randn(*shape) * std)

    def zeros(*shape):
        return nn.Parameter(torch.zeros(*shape))

    def ones(*shape):
        return nn.Parameter(torch.ones(*shape))

    res = 0.02 / math.sqrt(2 * L)  # scaled(0.02, layers)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1_g, self.ln1_b = ones(D), zeros(D)
            self.qkv_w, self.qkv_b = normal(D, 3 * D), zeros(3 * D)
            self.proj_w, self.proj_b = normal(D, D, std=res), zeros(D)
            self.ln2_g, self.ln2_b = ones(D), zeros(D)
            self.fc_w, self.fc_b = normal(D, 4 * D), zeros(4 * D)
            self.mproj_w, self.mproj_b = normal(4 * D, D, std=res), zeros(D)

        def forward(self, x):
            B, T, _ = x.shape
            h = F.layer_norm(x, (D,), self.ln1_g, self.ln1_b, 1e-5)
            # weights are [in, out]: F.linear(h, W.t(), b) = h @ W + b
            qkv = F.linear(h, self.qkv_w.t(), self.qkv_b).view(B, T, H, 3, hd)
            q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # [B, H, T, hd]
            o = attend(q, k, v).transpose(1, 2).reshape(B, T, D)
            x = x + F.linear(o, self.proj_w.t(), self.proj_b)
            m = F.layer_norm(x, (D,), self.ln2_g, self.ln2_b, 1e-5)
            f = F.gelu(F.linear(m, self.fc_w.t(), self.fc_b), approximate="tanh")
            return x + F.linear(f, self.mproj_w.t(), self.mproj_b)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = normal(V, D), normal(a.ctx, D)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.lnf_g, self.lnf_b = ones(D), zeros(D)

        def forward(self, tok, tgt):
            T = tok.shape[1]
            x = F.embedding(tok, self.wte) + self.wpe[:T]
            for blk in self.blocks:
                x = blk(x)
            x = F.layer_norm(x, (D,), self.lnf_g, self.lnf_b, 1e-5)
            logits = F.linear(x, self.wte)  # x @ wte^T over the padded vocabulary
            # the padding columns are masked out of the loss (classes=50257)
            return F.cross_entropy(logits[..., :classes].reshape(-1, classes).float(),
                                   tgt.reshape(-1))

    return GPT, sdpa is not None


# --------------------------------------------------------------- data
class Batches:
    def __init__(self, a, torch, dev):
        self.torch, self.dev, self.B, self.T = torch, dev, a.batch, a.seq
        self.classes = min(a.vocab, 50257)
        self.tokens = None
        if a.data:
            with open(a.data, "rb") as f:
                raw = f.read()
            header = torch.frombuffer(bytearray(raw[:1024]), dtype=torch.int32)
            if int(header[0]) != 20240520 or int(header[1]) != 1:
                raise ValueError("%s: not an llm.c token file (magic 20240520, version 1)" % a.data)
            n = int(header[2])
            if n < self.T + 2 or len(raw) < 1024 + 2 * n:
                raise ValueError("%s: %d tokens, too few or truncated" % (a.data, n))
            t16 = torch.frombuffer(bytearray(raw[1024:1024 + 2 * n]), dtype=torch.int16)
            self.tokens = t16.to(torch.int32).bitwise_and(0xFFFF)  # uint16 -> int32
            self.n = n
            self.offs = torch.arange(self.T + 1, dtype=torch.int64)
        else:
            self.gen = torch.Generator(device=dev)
            self.gen.manual_seed(a.seed + 1)

    def get(self, step):
        torch, B, T = self.torch, self.B, self.T
        if self.tokens is None:
            rows = torch.randint(0, self.classes, (B, T + 1), device=self.dev,
                                 generator=self.gen, dtype=torch.int64)
        else:
            starts = torch.tensor([((step * B + b) * T) % (self.n - T - 1) for b in range(B)],
                                  dtype=torch.int64)
            rows = self.tokens[starts[:, None] + self.offs].to(torch.int64)
            if self.dev.type == "cuda":
                rows = rows.pin_memory().to(self.dev, non_blocking=True)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


# --------------------------------------------------------------- one run
def profile_table(torch, step_fn, dev):
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step_fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    avg = prof.key_averages()
    if dev.type == "cuda":
        # torch >= 2.4 names the columns device_*, older ones cuda_*
        probe = avg[0] if len(avg) else None
        key = "self_device_time_total" if probe is not None and hasattr(probe, "self_device_time_total") \
            else "self_cuda_time_total"
    else:
        key = "self_cpu_time_total"
    return avg.table(sort_by=key, row_limit=20)


def run(a):
    import torch
    rec = base_record(a, torch)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        rec["error"] = "CUDA is not available to torch %s" % torch.__version__
        return rec
    if cuda:
        rec["device"] = torch.cuda.get_device_name(dev)
    else:
        rec["device"] = "cpu"
    torch.manual_seed(a.seed)

    if a.mode == "compile" and not hasattr(torch, "compile"):
        rec["error"] = "torch.compile is not available in torch %s" % torch.__version__
        return rec

    GPT, has_sdpa = build(a, torch)
    model = GPT().to(dev)  # drawn on the CPU from the seed, then moved
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt, fused = None, False
    if not a.no_fused:
        try:
            opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
            fused = True
        except (TypeError, RuntimeError, ValueError):
            opt = None
    if opt is None:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    rec.update({"params": sum(p.numel() for p in params), "fused_adamw": fused,
                "sdpa": has_sdpa, "amp": a.amp})

    fwd = model
    if a.mode == "compile":
        kw = {"mode": a.compile_mode} if a.compile_mode else {}
        fwd = torch.compile(model, **kw)
        if a.compile_mode:
            rec["compile_mode"] = a.compile_mode

    amp = a.amp == "bf16"
    if amp:
        try:
            torch.autocast(dev.type, dtype=torch.bfloat16)
        except Exception as e:  # an old torch without bf16 autocast here
            amp = False
            rec["amp"] = "none (%s)" % str(e).split("\n")[0][:200]

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if amp else _nullcontext()

    data = Batches(a, torch, dev)
    counter = [0]

    def step():
        tok, tgt = data.get(counter[0])
        counter[0] += 1
        with autocast():
            loss = fwd(tok, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    # warm-up (compilation included)
    t0 = time.perf_counter()
    loss = step()
    rec["loss_first"] = float(loss.item())
    rec["first_step_s"] = round(time.perf_counter() - t0, 3)
    for _ in range(a.warmup - 1):
        step()
    sync()
    rec["warmup_s"] = round(time.perf_counter() - t0, 3)
    if a.mode == "compile":
        rec["compile_s"] = rec["first_step_s"]

    # timed steps
    times_ms = []
    if cuda:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(a.steps + 1)]
        w0 = time.perf_counter()
        ev[0].record()
        for i in range(a.steps):
            loss = step()
            ev[i + 1].record()
        torch.cuda.synchronize(dev)
        wall = time.perf_counter() - w0
        times_ms = [ev[i].elapsed_time(ev[i + 1]) for i in range(a.steps)]
    else:
        w0 = time.perf_counter()
        for i in range(a.steps):
            s0 = time.perf_counter()
            loss = step()
            loss.item()
            times_ms.append(1e3 * (time.perf_counter() - s0))
        wall = time.perf_counter() - w0
    rec["loss_last"] = float(loss.item())

    med = statistics.median(times_ms)
    tokens = a.batch * a.seq
    flops, mm, att = ptc_gpt2_flops(a.batch, a.seq, a.layers, a.dim, a.heads, a.vocab, a.ctx)
    rec.update({
        "tokens_per_s": round(tokens / (med / 1e3), 1),
        "step_ms_median": round(med, 3),
        "step_ms_min": round(min(times_ms), 3),
        "step_ms_max": round(max(times_ms), 3),
        "wall_tokens_per_s": round(tokens * a.steps / wall, 1),
        "mfu": float("%.4g" % (flops / (med / 1e3) / (a.peak_tflops * 1e12))),
        "flops_per_step": flops,
        "flops_matmul": mm,
        "flops_attention": att,
        "peak_tflops": a.peak_tflops,
        "warmup": a.warmup,
        "steps": a.steps,
        "data": a.data or "random",
    })
    if cuda:
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        rec["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / 2**30, 3)
        rec["cuda"] = torch.version.cuda
    else:
        rec["peak_mem_gib"] = None
    if a.profile:
        print("# torch.profiler: 3 steps, the 20 ops with the most self %s time"
              % ("GPU" if cuda else "CPU"), flush=True)
        try:
            print(profile_table(torch, step, dev), flush=True)
        except Exception as e:
            print("# profiler failed: %s" % e, flush=True)
    return rec


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_guarded(a):
    """run(a), with any failure turned into a record with "error"."""
    try:
        import torch
    except ImportError as e:
        rec = base_record(a)
        rec["error"] = "import torch: %s" % e
        return rec
    try:
        return run(a)
    except Exception as e:  # compile failures, out of memory, bad data
        rec = base_record(a, torch)
        if is_oom(torch, e):
            rec["error"], rec["oom"] = "out of memory", True
        else:
            tb = traceback.format_exc()
            rec["error"] = "%s: %s" % (type(e).__name__, str(e)[:2000])
            rec["traceback_tail"] = tb[-3000:]
        return rec


def max_batch(a, argv):
    """Each size in a child process, largest first; the first that fits."""
    skip = {"--max-batch", "--profile"}
    base, i = [], 0
    while i < len(argv):  # drop --max-batch, --profile and any --batch
        x = argv[i]
        if x in skip:
            i += 1
        elif x in ("--batch", "-B"):
            i += 2
        elif x.startswith("--batch=") or (x.startswith("-B") and len(x) > 2):
            i += 1
        else:
            base.append(x)
            i += 1
    tried = []
    for B in MAX_BATCH_TRIES:
        cmd = [sys.executable, os.path.abspath(__file__)] + base + ["--batch", str(B)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=a.child_timeout)
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            rec = json.loads(lines[-1]) if lines else {
                "error": "no result (exit %d): %s" % (p.returncode, p.stderr[-2000:])}
        except subprocess.TimeoutExpired:
            rec = {"error": "timed out after %g s" % a.child_timeout}
        took = round(time.perf_counter() - t0, 1)
        if "error" not in rec:
            tried.append({"B": B, "fits": True, "s": took})
            rec["max_batch"] = B
            rec["tried"] = tried
            if a.profile:  # the profile of the size that fits
                p = subprocess.run(cmd + ["--profile"], stdout=subprocess.PIPE,
                                   universal_newlines=True)
                print("\n".join(l for l in p.stdout.splitlines() if not l.startswith("{")),
                      flush=True)
            return rec
        tried.append({"B": B, "fits": False, "s": took,
                      "error": rec.get("error", "")[:300]})
        if not rec.get("oom"):
            rec = base_record(a)
            rec.update({"error": "batch %d failed, not for memory: %s"
                        % (B, tried[-1]["error"]), "tried": tried})
            return rec
    rec = base_record(a)
    rec.update({"error": "no batch size in %s fits" % (MAX_BATCH_TRIES,), "tried": tried})
    return rec


def main(argv):
    a = parse_args(argv)
    if a.max_batch:
        rec = max_batch(a, argv)
        rec["impl"] = "torch-" + a.mode
    else:
        rec = run_guarded(a)
    emit(rec)
    return 1 if "error" in rec else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
