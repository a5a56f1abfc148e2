#!/usr/bin/env python3
"""Multiply-adds per image of a torchvision ResNet as a DNN and with one block as an S-member
Bayesian block (every layer from that block on runs S times), counted the way libre computes
them: a convolution over a 1x1 map counts only its centre tap (libre runs it as a matmul, the
other taps meet only padding); any other convolution counts every tap.

The ratio it prints is the arithmetic floor of "Bayesian forward / DNN forward" for that model
(docs/results.md, "Benchmarks"). Needs torch and torchvision, e.g. the venv
scripts/bench_vs_pytorch.sh creates:

    ~/.cache/libre/bench-venv/bin/python scripts/count_macs.py --model resnet50 --size 32
"""
import argparse

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--size", type=int, default=32, help="input height and width in pixels")
    ap.add_argument("--block", help="module path of the Bayesian block [default: the last block]")
    ap.add_argument("--samples", type=int, default=20, help="S, the MC samples / members")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--cifar-stem", action="store_true",
                    help="3x3 stride-1 conv1 and no max-pool, as libre's --cifar-stem")
    a = ap.parse_args()

    m = getattr(torchvision.models, a.model)(num_classes=a.classes)
    if a.cifar_stem or a.in_channels != 3:
        k, s, p = (3, 1, 1) if a.cifar_stem else (7, 2, 3)
        m.conv1 = torch.nn.Conv2d(a.in_channels, 64, k, s, p, bias=False)
    if a.cifar_stem:
        m.maxpool = torch.nn.Identity()
    block = a.block or f"layer4.{len(m.layer4) - 1}"
    if block not in dict(m.named_modules()):
        ap.error(f"--block {block}: no such module in {a.model}")

    rows = []  # (name, macs) in execution order

    def hook(name):
        def f(mod, inp, out):
            x = inp[0]
            if isinstance(mod, torch.nn.Conv2d):
                taps = mod.kernel_size[0] * mod.kernel_size[1]
                if x.shape[2] == 1 and x.shape[3] == 1:
                    taps = 1
                macs = out.shape[2] * out.shape[3] * mod.out_channels * (
                    mod.in_channels // mod.groups) * taps
            else:
                macs = mod.in_features * mod.out_features
            rows.append((name, macs))
        return f

    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        m.eval()(torch.rand(1, a.in_channels, a.size, a.size))

    dnn = sum(v for _, v in rows)
    first = next(i for i, (n, _) in enumerate(rows) if n.startswith(block + "."))
    repeated = sum(v for _, v in rows[first:])
    bayes = dnn + (a.samples - 1) * repeated
    print(f"{a.model} {a.size} px{' (CIFAR stem)' if a.cifar_stem else ''}, "
          f"{a.classes} classes: DNN {dnn / 1e6:.1f} M multiply-adds per image")
    parts = ", ".join(f"{n} {v / 1e6:.2f}" for n, v in rows[first:])
    print(f"from {block} on (runs S = {a.samples} times): {repeated / 1e6:.2f} M ({parts})")
    print(f"Bayesian forward {bayes / 1e6:.1f} M: {bayes / dnn:.2f}x the DNN's arithmetic")


if __name__ == "__main__":
    main()
