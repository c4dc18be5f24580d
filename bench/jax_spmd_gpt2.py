"""jax_spmd_gpt2.py -- the GPT-2 training step of models/gpt2.ptg in JAX,
partitioned by XLA's SPMD partitioner over a (dp, tp) mesh of host CPU
devices: the peer of `mpirun -np 8 ptrun` on a plan compiled with
`ptc --mesh 2x4`, for bench/run-mesh.

The model is the .ptg's: tied token embedding and lm head, learned
positions, LayerNorm eps 1e-5, tanh GELU, causal attention, biases on every
linear layer, the fused q|k|v projection with its columns grouped by head
([heads, 3, head_dim], Megatron-LM's layout), a padded vocabulary masked out
of the loss (min(vocab, 50257) real classes).  The step is ptc's default
optimizer: AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices)
after clipping the global gradient norm at 1.0, in float32.

Shardings (jax.sharding.NamedSharding over Mesh((dp, tp), ("dp", "tp"))):
the batch over dp; Megatron over tp: q|k|v and fc column-split (whole heads
per device), the two output projections row-split, the embedding
vocabulary-split (so are the logits); the rest replicated.  Optimizer
moments are sharded like their parameters.

  python3 jax_spmd_gpt2.py [--mesh 2x4] [--batch 8] [--seq 128] [--layers 2]
      [--dim 256] [--heads 8] [--vocab 4096] [--ctx 128] [--steps 10] [--warmup 3]
      [--hlo FILE]

Prints one JSON line: {"impl": "jax-spmd", "tok_per_s": ..., "step_ms": ...,
...}: the median over --steps timed steps after --warmup untimed ones (the
first compiles).  The devices are XLA_FLAGS=--xla_force_host_platform_
device_count=dp*tp, all on this machine's cores.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", default="2x4", help="DPxTP (default 2x4)")
    for name, default in (("batch", 8), ("seq", 128), ("layers", 2), ("dim", 256),
                          ("heads", 8), ("vocab", 4096), ("ctx", 128), ("steps", 10),
                          ("warmup", 3), ("seed", 0)):
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--hlo", metavar="FILE",
                   help="also write the compiled, partitioned program's HLO text to FILE")
    a = p.parse_args()
    try:
        a.dp, a.tp = (int(x) for x in a.mesh.split("x"))
    except ValueError:
        p.error("--mesh %s: expected DPxTP, such as 2x4" % a.mesh)
    for what, n, by in (("--batch", a.batch, a.dp), ("--heads", a.heads, a.tp),
                        ("--vocab", a.vocab, a.tp), ("4*dim", 4 * a.dim, a.tp),
                        ("--dim", a.dim, a.heads)):
        if n % by:
            p.error("%s %d does not divide by %d" % (what, n, by))
    if a.seq > a.ctx:
        p.error("--seq %d is longer than --ctx %d" % (a.seq, a.ctx))
    return a


def main():
    a = parse()
    # before jax is imported: one host "device" per mesh position
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=%d"
                               % (a.dp * a.tp)).strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices("cpu")
    if len(devices) < a.dp * a.tp:
        sys.exit("jax_spmd_gpt2: JAX sees %d CPU devices, the mesh needs %d (XLA_FLAGS=%s)"
                 % (len(devices), a.dp * a.tp, os.environ["XLA_FLAGS"]))
    mesh = Mesh(np.array(devices[:a.dp * a.tp]).reshape(a.dp, a.tp), ("dp", "tp"))
    B, T, L, D, H, V = a.batch, a.seq, a.layers, a.dim, a.heads, a.vocab
    hd, classes = D // H, min(V, 50257)

    # ---- parameters: (shape, init, std, partition spec)
    res = 0.02 / math.sqrt(2 * L)  # scaled(0.02, layers)
    spec = {"wte": ((V, D), "normal", 0.02, P("tp", None)),
            "wpe": ((a.ctx, D), "normal", 0.02, P()),
            "lnf.g": ((D,), "ones", 0, P()), "lnf.b": ((D,), "zeros", 0, P())}
    for i in range(L):
        p = "h%d." % i
        spec.update({
            p + "ln1.g": ((D,), "ones", 0, P()), p + "ln1.b": ((D,), "zeros", 0, P()),
            p + "attn.qkv.w": ((D, 3 * D), "normal", 0.02, P(None, "tp")),
            p + "attn.qkv.b": ((3 * D,), "zeros", 0, P("tp")),
            p + "attn.proj.w": ((D, D), "normal", res, P("tp", None)),
            p + "attn.proj.b": ((D,), "zeros", 0, P()),
            p + "ln2.g": ((D,), "ones", 0, P()), p + "ln2.b": ((D,), "zeros", 0, P()),
            p + "mlp.fc.w": ((D, 4 * D), "normal", 0.02, P(None, "tp")),
            p + "mlp.fc.b": ((4 * D,), "zeros", 0, P("tp")),
            p + "mlp.proj.w": ((4 * D, D), "normal", res, P("tp", None)),
            p + "mlp.proj.b": ((D,), "zeros", 0, P()),
        })
    shard = {k: NamedSharding(mesh, s[3]) for k, s in spec.items()}
    rng = np.random.default_rng(a.seed)
    w = {}
    for k, (shape, init, std, _) in spec.items():
        x = (np.ones(shape) if init == "ones" else np.zeros(shape) if init == "zeros"
             else rng.standard_normal(shape) * std)
        w[k] = jax.device_put(x.astype(np.float32), shard[k])
    m = {k: jax.device_put(np.zeros(s[0], np.float32), shard[k]) for k, s in spec.items()}
    v = {k: jax.device_put(np.zeros(s[0], np.float32), shard[k]) for k, s in spec.items()}
    batch_sharding = NamedSharding(mesh, P("dp", None))
    toks = rng.integers(0, classes, (B, T + 1)).astype(np.int32)
    tok = jax.device_put(toks[:, :-1], batch_sharding)
    tgt = jax.device_put(toks[:, 1:], batch_sharding)

    def at(x, *s):  # pin an activation's layout: (dp, ..., tp) Megatron style
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*s)))

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-5) * g + b

    causal = jnp.tril(jnp.ones((T, T), bool))

    def loss_fn(w, tok, tgt):
        x = at(w["wte"][tok] + w["wpe"][:T], "dp", None, None)  # (B,T,D)
        for i in range(L):
            p = "h%d." % i
            h = ln(x, w[p + "ln1.g"], w[p + "ln1.b"])
            qkv = at(h @ w[p + "attn.qkv.w"] + w[p + "attn.qkv.b"], "dp", None, "tp")
            qkv = at(qkv.reshape(B, T, H, 3, hd), "dp", None, "tp", None, None)  # by head
            q, k, vv = (qkv[:, :, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (B,H,T,hd)
            s = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -jnp.inf)
            o = at(jax.nn.softmax(s, -1) @ vv, "dp", "tp", None, None)
            o = o.transpose(0, 2, 1, 3).reshape(B, T, D)
            x = at(x + o @ w[p + "attn.proj.w"] + w[p + "attn.proj.b"], "dp", None, None)
            h = ln(x, w[p + "ln2.g"], w[p + "ln2.b"])
            f = at(jax.nn.gelu(h @ w[p + "mlp.fc.w"] + w[p + "mlp.fc.b"], approximate=True),
                   "dp", None, "tp")
            x = at(x + f @ w[p + "mlp.proj.w"] + w[p + "mlp.proj.b"], "dp", None, None)
        logits = at(ln(x, w["lnf.g"], w["lnf.b"]) @ w["wte"].T, "dp", None, "tp")  # (B,T,V)
        if classes < V:  # the padding is no class
            logits = jnp.where(jnp.arange(V) < classes, logits, -jnp.inf)
        lp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(lp, tgt[..., None], -1).mean()

    def step(w, m, v, t, tok, tgt):
        loss, g = jax.value_and_grad(loss_fn)(w, tok, tgt)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        clip = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
        lr, b1, b2, eps = 1e-4, 0.9, 0.95, 1e-8
        nw, nm, nv = {}, {}, {}
        for k in w:
            gk = g[k] * clip
            nm[k] = b1 * m[k] + (1 - b1) * gk
            nv[k] = b2 * v[k] + (1 - b2) * gk * gk
            wd = 0.1 if w[k].ndim >= 2 else 0.0
            nw[k] = (w[k] * (1 - lr * wd)
                     - lr * (nm[k] / (1 - b1 ** t)) / (jnp.sqrt(nv[k] / (1 - b2 ** t)) + eps))
        return nw, nm, nv, loss

    rep = NamedSharding(mesh, P())
    jstep = jax.jit(step, in_shardings=(shard, shard, shard, rep, batch_sharding, batch_sharding),
                    out_shardings=(shard, shard, shard, rep), donate_argnums=(0, 1, 2))
    if a.hlo:
        t = jax.device_put(jnp.float32(1), rep)
        with open(a.hlo, "w") as f:
            f.write(jstep.lower(w, m, v, t, tok, tgt).compile().as_text())
    times, losses = [], []
    for s in range(a.warmup + a.steps):
        t = jax.device_put(jnp.float32(s + 1), rep)
        t0 = time.perf_counter()
        w, m, v, loss = jstep(w, m, v, t, tok, tgt)
        loss.block_until_ready()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    if not all(map(math.isfinite, losses)):
        sys.exit("jax_spmd_gpt2: a loss is not finite: %s" % losses)
    ms = statistics.median(times) * 1e3
    print(json.dumps({"impl": "jax-spmd", "tok_per_s": round(B * T / (ms / 1e3), 1),
                      "step_ms": round(ms, 3), "mesh": {"dp": a.dp, "tp": a.tp},
                      "batch": B, "seq": T, "layers": L, "dim": D, "heads": H, "vocab": V,
                      "steps_timed": len(times), "first_loss": round(losses[0], 6),
                      "last_loss": round(losses[-1], 6), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
