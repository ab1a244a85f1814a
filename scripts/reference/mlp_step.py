#!/usr/bin/env python3
"""Reference timing of one training step of the capsule-sized MLP, for `kvc-bench train-step`.

The step: x [batch, 512] -> Linear(512, 1024) -> ReLU -> Linear(1024, 64) -> MSE against a target -> backward ->
AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01). The input needs no gradient, as in the Swift
benchmark. Runs in numpy (hand-written backward, in-place where numpy allows) and, when importable, PyTorch CPU.

Threads: numpy's BLAS reads OPENBLAS_NUM_THREADS at import, so the caller sets it in the environment;
`--threads` sets PyTorch's intra-op threads. Prints one JSON object:
  {"numpy": {"median_ms": ..., "min_ms": ..., "loss_first": ..., "loss_last": ...}, "torch": {...} or null,
   "torch_fused_adamw": {...} or null, ...}
"""
import argparse
import json
import os
import sys
import time


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def numpy_step_times(args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    f32 = np.float32
    x = rng.standard_normal((args.batch, args.inp), dtype=f32)
    target = rng.standard_normal((args.batch, args.out), dtype=f32)
    b1 = 1 / np.sqrt(args.inp)
    b2 = 1 / np.sqrt(args.hidden)
    params = {
        "w1": rng.uniform(-b1, b1, (args.hidden, args.inp)).astype(f32),
        "b1": rng.uniform(-b1, b1, (args.hidden,)).astype(f32),
        "w2": rng.uniform(-b2, b2, (args.out, args.hidden)).astype(f32),
        "b2": rng.uniform(-b2, b2, (args.out,)).astype(f32),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    lr, beta1, beta2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
    t = 0
    losses = []

    def step():
        nonlocal t
        p = params
        h = x @ p["w1"].T
        h += p["b1"]
        np.maximum(h, 0, out=h)
        y = h @ p["w2"].T
        y += p["b2"]
        diff = y - target
        losses.append(float(np.mean(diff * diff)))
        gy = diff
        gy *= 2.0 / diff.size
        grads = {"w2": gy.T @ h, "b2": gy.sum(0)}
        gh = gy @ p["w2"]
        gh *= h > 0
        grads["w1"] = gh.T @ x
        grads["b1"] = gh.sum(0)
        t += 1
        bc1 = 1 - beta1 ** t
        bc2 = 1 - beta2 ** t
        for k in p:
            g = grads[k]
            p[k] *= 1 - lr * wd
            m[k] *= beta1
            m[k] += (1 - beta1) * g
            v[k] *= beta2
            v[k] += (1 - beta2) * (g * g)
            denom = np.sqrt(v[k])
            denom /= np.sqrt(bc2)
            denom += eps
            p[k] -= (lr / bc1) * m[k] / denom

    return time_steps(step, args), losses


def torch_step_times(args, fused=False):
    try:
        import torch
    except Exception:
        return None, None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, args.inp)
    target = torch.randn(args.batch, args.out)
    model = torch.nn.Sequential(torch.nn.Linear(args.inp, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, args.out))
    # Default AdamW on CPU runs the per-tensor loop; fused=True is PyTorch's single-kernel CPU implementation.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                            **({"fused": True} if fused else {}))
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    return time_steps(step, args), losses


def time_steps(step, args):
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(times, losses):
    if times is None:
        return None
    return {"median_ms": median(times), "min_ms": min(times), "loss_first": losses[0], "loss_last": losses[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--inp", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--out", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    result = {"numpy": summary(*numpy_step_times(args)), "torch": None,
              "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")}}
    import numpy
    result["numpy_version"] = numpy.__version__
    if not args.skip_torch:
        times, losses = torch_step_times(args)
        result["torch"] = summary(times, losses)
        if times is not None:
            import torch
            result["torch_version"] = torch.__version__
            try:
                result["torch_fused_adamw"] = summary(*torch_step_times(args, fused=True))
            except Exception as e:  # older PyTorch: no fused AdamW on CPU
                result["torch_fused_adamw"] = None
                result["torch_fused_adamw_error"] = str(e)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
