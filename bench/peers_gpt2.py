"""peers_gpt2.py -- GPT-2 training steps in PyTorch (eager, torch.compile)
and JAX (jit) on CPU, for bench/run.  The same model as models/gpt2.ptg
(tied embeddings, learned positions, LayerNorm, tanh GELU, causal
attention, padded vocabulary masked out of the loss), the same batch, and
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices) with clipping at 1.0,
in float32.

  python3 peers_gpt2.py torch-eager|torch-compile|jax B T LAYERS DIM HEADS VOCAB STEPS THREADS

Prints one line: `tokens_per_s N` (median over the timed steps; the first
steps, which compile, are not timed).
"""
import math
import statistics
import sys
import time


def torch_run(mode, B, T, L, D, H, V, steps, threads):
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    P = lambda *s, std=0.02: torch.nn.Parameter(torch.randn(*s, generator=g) * std)
    Z = lambda *s: torch.nn.Parameter(torch.zeros(*s))
    O = lambda *s: torch.nn.Parameter(torch.ones(*s))
    w = {"wte": P(V, D), "wpe": P(1024, D), "lnf.g": O(D), "lnf.b": Z(D)}
    for i in range(L):
        p = "h%d." % i
        w.update({p + "ln1.g": O(D), p + "ln1.b": Z(D), p + "qkv.w": P(D, 3 * D), p + "qkv.b": Z(3 * D),
                  p + "proj.w": P(D, D), p + "proj.b": Z(D), p + "ln2.g": O(D), p + "ln2.b": Z(D),
                  p + "fc.w": P(D, 4 * D), p + "fc.b": Z(4 * D), p + "mp.w": P(4 * D, D), p + "mp.b": Z(D)})
    F = torch.nn.functional

    def loss_fn(tok, tgt):
        x = w["wte"][tok] + w["wpe"][:T]
        for i in range(L):
            p = "h%d." % i
            a = F.layer_norm(x, (D,), w[p + "ln1.g"], w[p + "ln1.b"], 1e-5)
            q, k, v = (a @ w[p + "qkv.w"] + w[p + "qkv.b"]).split(D, -1)
            q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True) if hasattr(F, "scaled_dot_product_attention") else None
            x = x + o.transpose(1, 2).reshape(B, T, D) @ w[p + "proj.w"] + w[p + "proj.b"]
            m = F.layer_norm(x, (D,), w[p + "ln2.g"], w[p + "ln2.b"], 1e-5)
            x = x + F.gelu(m @ w[p + "fc.w"] + w[p + "fc.b"], approximate="tanh") @ w[p + "mp.w"] + w[p + "mp.b"]
        logits = F.layer_norm(x, (D,), w["lnf.g"], w["lnf.b"], 1e-5) @ w["wte"].T
        return F.cross_entropy(logits[..., :50257].reshape(-1, min(V, 50257)), tgt.reshape(-1))

    params = list(w.values())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)

    def step(tok, tgt):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(tok, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    if mode == "torch-compile":
        loss_fn = torch.compile(loss_fn)
    tok = torch.randint(0, 50257, (B, T), generator=g)
    tgt = torch.randint(0, 50257, (B, T), generator=g)
    times = []
    for s in range(steps + 3):
        t0 = time.perf_counter()
        step(tok, tgt)
        if s >= 3:
            times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times)


def jax_run(B, T, L, D, H, V, steps, threads):
    import os
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=%d" % threads)
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    def P(*s, std=0.02):
        nonlocal key
        key, k = jax.random.split(key)
        return jax.random.normal(k, s, jnp.float32) * std
    w = {"wte": P(V, D), "wpe": P(1024, D), "lnf.g": jnp.ones(D), "lnf.b": jnp.zeros(D)}
    for i in range(L):
        p = "h%d." % i
        w.update({p + "ln1.g": jnp.ones(D), p + "ln1.b": jnp.zeros(D), p + "qkv.w": P(D, 3 * D), p + "qkv.b": jnp.zeros(3 * D),
                  p + "proj.w": P(D, D), p + "proj.b": jnp.zeros(D), p + "ln2.g": jnp.ones(D), p + "ln2.b": jnp.zeros(D),
                  p + "fc.w": P(D, 4 * D), p + "fc.b": jnp.zeros(4 * D), p + "mp.w": P(4 * D, D), p + "mp.b": jnp.zeros(D)})

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(v + 1e-5) * g + b

    def loss_fn(w, tok, tgt):
        x = w["wte"][tok] + w["wpe"][:T]
        mask = jnp.tril(jnp.ones((T, T), bool))
        for i in range(L):
            p = "h%d." % i
            a = ln(x, w[p + "ln1.g"], w[p + "ln1.b"])
            q, k, v = jnp.split(a @ w[p + "qkv.w"] + w[p + "qkv.b"], 3, -1)
            q, k, v = (t.reshape(B, T, H, D // H).transpose(0, 2, 1, 3) for t in (q, k, v))
            s = jnp.where(mask, q @ k.transpose(0, 1, 3, 2) / math.sqrt(D // H), -jnp.inf)
            o = jax.nn.softmax(s, -1) @ v
            x = x + o.transpose(0, 2, 1, 3).reshape(B, T, D) @ w[p + "proj.w"] + w[p + "proj.b"]
            m = ln(x, w[p + "ln2.g"], w[p + "ln2.b"])
            x = x + jax.nn.gelu(m @ w[p + "fc.w"] + w[p + "fc.b"], approximate=True) @ w[p + "mp.w"] + w[p + "mp.b"]
        logits = (ln(x, w["lnf.g"], w["lnf.b"]) @ w["wte"].T)[..., :min(V, 50257)]
        lp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(lp, tgt[..., None], -1).mean()

    @jax.jit
    def step(w, m, v, t, tok, tgt):
        loss, g = jax.value_and_grad(loss_fn)(w, tok, tgt)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        c = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
        lr, b1, b2 = 1e-4, 0.9, 0.95
        nw, nm, nv = {}, {}, {}
        for k in w:
            gk = g[k] * c
            nm[k] = b1 * m[k] + (1 - b1) * gk
            nv[k] = b2 * v[k] + (1 - b2) * gk * gk
            wd = 0.1 if w[k].ndim >= 2 else 0.0
            nw[k] = w[k] * (1 - lr * wd) - lr * (nm[k] / (1 - b1 ** t)) / (jnp.sqrt(nv[k] / (1 - b2 ** t)) + 1e-8)
        return nw, nm, nv, loss

    m = {k: jnp.zeros_like(x) for k, x in w.items()}
    v = {k: jnp.zeros_like(x) for k, x in w.items()}
    tok = jax.random.randint(key, (B, T), 0, 50257)
    tgt = jax.random.randint(jax.random.split(key)[0], (B, T), 0, 50257)
    times = []
    for s in range(steps + 2):
        t0 = time.perf_counter()
        w, m, v, loss = step(w, m, v, float(s + 1), tok, tgt)
        loss.block_until_ready()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times)


if __name__ == "__main__":
    mode = sys.argv[1]
    B, T, L, D, H, V, steps, threads = (int(a) for a in sys.argv[2:10])
    if mode.startswith("torch"):
        r = torch_run(mode, B, T, L, D, H, V, steps, threads)
    elif mode == "jax":
        r = jax_run(B, T, L, D, H, V, steps, threads)
    else:
        sys.exit(__doc__)
    print("tokens_per_s %.1f" % r)
