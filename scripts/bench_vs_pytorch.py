#!/usr/bin/env python3
"""The PyTorch side of the libre-versus-PyTorch speed comparison (scripts/bench_vs_pytorch.sh).

    bench_vs_pytorch.py CASE REPS [BATCH] [--impl ref|opt]   one line per timed forward: CASE MS
    bench_vs_pytorch.py --check                               the implementations agree (below)
    bench_vs_pytorch.py --e2e WEIGHTS DATA [--batch-size N] [--impl ref|opt]
    bench_vs_pytorch.py --attack CASE WEIGHTS DATA IMAGES STEPS REPS [--impl ref|opt]

CASE, REPS and BATCH mean what they mean for examples/bench_vs_pytorch.rs (the libre side):
NET-SIZE:VARIANT with NET lenet5 | resnet18 | resnet34 | resnet50 (suffix c: CIFAR stem, 10
classes; c1: the same with one input channel, Fashion-MNIST's shape) and VARIANT dnn | ens-last |
mf-last | mf-all | mf-all-seq, S = 20, random weights (speed only), input torch.rand after
torch.manual_seed(0), every forward under torch.no_grad() (not inference_mode, as libre's
tch::no_grad), batch norm in eval mode (running statistics); or VARIANT dnn-train |
ens-last-train (ResNets): one training step per timed unit, forward + backward + SGD update, batch
norm in training mode, labels torch.randint (scripts/libre_train_torch.py; --impl ref routes the
LiBRe ensemble as the reference's code does, opt sorts the images by member). Env:
BENCH_THREADS (torch.set_num_threads), BENCH_WARMUP (warm-up forwards, default 1), BENCH_DEVICE
(cpu by default, cuda or cuda:N: the model and input move there and every timed forward ends with
torch.cuda.synchronize(), as on the libre side), BENCH_CUDNN_BENCHMARK=1 (cuDNN's autotuner on),
BENCH_PRECISION=bf16 (the model and input cast to torch.bfloat16, logits cast back to float32: what
libre's bf16 forward does).

Implementations (--impl):
  ref  what a ScalableBDL user runs (github.com/thudzj/ScalableBDL, branch `efficient`,
       scalablebdl/empirical and scalablebdl/mean_field with bnn_utils.parallel_eval; re-written
       here, not imported). A Bayesian layer that gets a 4-d input repeats it S times
       (x.unsqueeze(1).repeat(1, S, 1, 1, 1)) and runs one grouped conv (groups = S) over
       [B, S*C, H, W]; a Linear runs one bmm over the members; a BatchNorm repeats its input, runs
       F.batch_norm on [B*S, C, H, W] and applies the S affine pairs. Mean-field layers draw S
       weight samples per forward (randn * exp(psi) + mu). After the Bayesian block the residual
       adds identity.unsqueeze(1) and the head folds the sample axis into the batch, as in the
       reference's models/resnet.py. mf-all-seq is S plain forwards in the reference's
       `use_single_eps` mode (one weight sample per forward shared by the batch; its batch norms
       draw their affine per example, as the reference's BayesBatchNorm2dMF does outside
       parallel_eval). The dnn case is torchvision's resnet18/34/50 when torchvision is
       installed, else the same architecture written here with torchvision's module names.
  opt  best-effort PyTorch, same estimator and the same draws: the first Bayesian layer convolves
       the shared input once with all S*out filters (no repeat); a conv with S weights on a 1x1
       map (the last ResNet stage at 32 px) keeps only the centre tap of its kernel, the one tap
       that meets data under 'same' padding: one matmul [B, C] x [C, S*out] on a shared input,
       else one bmm over the samples (libre does the same: docs/results.md, "Fast path for 1x1
       maps"); a Linear on a shared input is one matmul with the S*out weight rows; batch norm is
       one fused scale-and-shift per sample (running statistics folded in); ensemble weights are
       packed once outside the timed loop. Everything else as ref.

--e2e times a plain PyTorch evaluation loop over a libre data file (images u8 [N,1,28,28], labels)
with a libre LeNet5 checkpoint (safetensors, read by hand; names = the PyTorch module tree; an
ensemble layer's members as NAME.weight_members / NAME.bias_members, run as above): like
`libre eval`, the timer starts after the data and weights are loaded and covers u8 -> float, the
forward, the softmax (averaged over S) and top-1 / NLL. It prints
`e2e:lenet5:VARIANT SECONDS IMAGES_PER_S TOP1` (VARIANT dnn, or ens-last for linear1 members).
"""

import argparse
import copy
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

S = 20  # MC samples / ensemble members


def fold(f, x, base_dim):
    """f on x; a sample axis (dim 1 of a base_dim+1-d tensor) is folded into the batch."""
    if x.dim() == base_dim + 1:
        y = f(x.flatten(0, 1))
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])
    return f(x)


# ---------------------------------------------------------------------------------------------
# Architectures (torchvision's / advertorch's module names), sample-axis aware where the
# reference's models are.


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def add_identity(out, identity):
    # ScalableBDL models/resnet.py: a deterministic shortcut meets a Bayesian branch.
    if identity.dim() == out.dim() - 1:
        identity = identity.unsqueeze(1)
    out += identity
    return out


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(add_identity(out, identity))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # torchvision v1.5: stride on conv2
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(add_identity(out, identity))


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, cifar_stem=False, in_channels=3):
        super().__init__()
        self.cin = 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, n, stride=1):
        downsample = None
        if stride != 1 or self.cin != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.cin, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.cin, planes, stride, downsample)]
        self.cin = planes * block.expansion
        layers += [block(self.cin, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = fold(self.maxpool, x, 4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if x.dim() == 5:  # the reference's head on [B, S, C, H, W]
            y = self.avgpool(x.flatten(0, 1)).view(*x.shape[:3])
            if isinstance(self.fc, nn.Linear):
                return self.fc(y.flatten(0, 1)).view(*y.shape[:2], -1)
            return self.fc(y)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LeNet5(nn.Module):
    """advertorch's LeNet5 (advertorch/test_utils.py), input [B, 1, size, size]."""

    def __init__(self, size=28):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1, stride=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1, stride=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool2 = nn.MaxPool2d(2)
        self.linear1 = nn.Linear((size // 4) ** 2 * 64, 200)
        self.relu3 = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(200, 10)

    def forward(self, x):
        out = fold(self.maxpool1, self.relu1(self.conv1(x)), 4)
        out = fold(self.maxpool2, self.relu2(self.conv2(out)), 4)
        out = out.flatten(out.dim() - 3)  # [B, 3136] or [B, S, 3136]
        out = self.relu3(self.linear1(out))
        return self.linear2(out)  # nn.Linear maps [B, S, 200] as is


RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build_net(arch, size, use_torchvision):
    """(model, input channels). use_torchvision: torchvision's ResNet when it is installed."""
    if arch == "lenet5":
        return LeNet5(size), 1
    channels = 3
    if arch.endswith("c1"):
        name, cifar, channels = arch[:-2], True, 1
    elif arch.endswith("c"):
        name, cifar = arch[:-1], True
    else:
        name, cifar = arch, False
    if name not in RESNETS:
        raise ValueError(f"unknown net {arch!r}")
    classes = 10 if cifar else 1000
    if use_torchvision and not cifar:
        try:
            import torchvision

            return getattr(torchvision.models, name)(weights=None, num_classes=classes), 3
        except ImportError:
            pass
    block, layers = RESNETS[name]
    return ResNet(block, layers, classes, cifar, channels), channels


# ---------------------------------------------------------------------------------------------
# Bayesian layers: ensemble ("ens", ScalableBDL's empirical/*EMP) and mean-field ("mf",
# mean_field/*MF), psi ~ U(-6, -5), members / mean initialised at the point weight
# (docs/design.md section 2).


class Bayes(nn.Module):
    """Holds a point tensor's posterior; `draw()` gives the S weights of one forward."""

    def __init__(self, family, impl):
        super().__init__()
        self.family, self.impl = family, impl
        self.seq = False  # mf-all-seq: one draw per forward (the reference's single_eps)
        self.cache = {}

    def posterior(self, name, t):
        t = t.detach()
        if self.family == "ens":
            setattr(self, name, nn.Parameter(t.unsqueeze(0).repeat(S, *([1] * t.dim()))))
        else:
            setattr(self, name + "_mu", nn.Parameter(t.clone()))
            setattr(self, name + "_psi", nn.Parameter(torch.empty_like(t).uniform_(-6, -5)))

    def draw(self, name, n=S):
        if self.family == "ens":
            return getattr(self, name)
        mu, psi = getattr(self, name + "_mu"), getattr(self, name + "_psi")
        if self.impl == "opt":
            sigma = self.packed(name + "_sigma", lambda: psi.exp())
            return torch.randn(n, *mu.shape, device=mu.device, dtype=mu.dtype).mul_(sigma).add_(mu)
        # MulExpAddFunction: eps.mul_(psi.exp()).add_(mu)
        return (torch.empty(n, *mu.shape, device=mu.device, dtype=mu.dtype).normal_(0, 1)
                .mul_(psi.exp()).add_(mu))

    def packed(self, key, make):
        """A derived tensor computed once (weights are fixed at inference)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


class BayesConv2d(Bayes):
    def __init__(self, conv, family, impl):
        super().__init__(family, impl)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.out_channels = conv.out_channels
        self.k = conv.kernel_size
        self.has_bias = conv.bias is not None
        self.posterior("weight", conv.weight)
        if self.has_bias:
            self.posterior("bias", conv.bias)

    def conv(self, x, w, b, groups):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)

    def centre_tap_only(self, x):
        """A 1x1 map under 'same' padding: only the centre tap of the kernel meets data."""
        kh, kw = self.k
        return (x.shape[-2:] == (1, 1) and kh % 2 == 1 and kw % 2 == 1
                and self.padding == (self.dilation[0] * (kh // 2), self.dilation[1] * (kw // 2)))

    def forward(self, x):
        if self.seq:  # single_eps: one weight sample for the batch
            w = self.draw("weight", 1)[0]
            b = self.draw("bias", 1)[0] if self.has_bias else None
            return self.conv(x, w, b, self.groups)
        w = self.draw("weight")  # [S, out, C/g, kh, kw]
        b = self.draw("bias") if self.has_bias else None  # [S, out]
        out = self.out_channels
        if self.impl == "opt" and self.groups == 1:
            kh, kw = self.k
            if self.centre_tap_only(x):
                if self.family == "ens":
                    wc = self.packed("wc", lambda: w[:, :, :, kh // 2, kw // 2].contiguous())
                else:
                    wc = w[:, :, :, kh // 2, kw // 2]  # [S, out, C]
                if x.dim() == 4:  # shared input: one matmul [B, C] x [C, S*out]
                    y = F.linear(x.flatten(1), wc.reshape(S * out, -1),
                                 None if b is None else b.flatten())
                    return y.view(x.shape[0], S, out, 1, 1)
                xs = x.view(x.shape[0], S, -1).transpose(0, 1)  # [S, B, C]
                wt = wc.transpose(1, 2)  # [S, C, out]
                y = torch.bmm(xs, wt) if b is None else torch.baddbmm(b.unsqueeze(1), xs, wt)
                return y.transpose(0, 1).reshape(x.shape[0], S, out, 1, 1)
            if x.dim() == 4:
                # Shared input: one conv with all S*out filters.
                y = self.conv(x, w.flatten(0, 1), None if b is None else b.flatten(), 1)
                return y.view(x.shape[0], S, out, *y.shape[2:])
        # The reference's parallel_eval.
        if x.dim() == 4:
            x = x.unsqueeze(1).repeat(1, S, 1, 1, 1)
        y = self.conv(x.flatten(1, 2), w.flatten(0, 1), None, self.groups * S)
        y = y.view(y.shape[0], S, out, y.shape[2], y.shape[3])
        if b is not None:
            y = y + b[None, :, :, None, None]
        return y


class BayesLinear(Bayes):
    def __init__(self, lin, family, impl):
        super().__init__(family, impl)
        self.out_features = lin.out_features
        self.has_bias = lin.bias is not None
        self.posterior("weight", lin.weight)
        if self.has_bias:
            self.posterior("bias", lin.bias)

    def forward(self, x):
        if self.seq:
            w = self.draw("weight", 1)[0]
            b = self.draw("bias", 1)[0] if self.has_bias else None
            return F.linear(x, w, b)
        w = self.draw("weight")  # [S, out, in]
        b = self.draw("bias") if self.has_bias else None  # [S, out]
        if self.impl == "opt":
            if x.dim() == 2:
                y = F.linear(x, w.flatten(0, 1), None if b is None else b.flatten())
                return y.view(x.shape[0], S, self.out_features)
            wt = w.transpose(1, 2)
            xs = x.transpose(0, 1)  # [S, B, in]
            y = torch.bmm(xs, wt) if b is None else torch.baddbmm(b.unsqueeze(1), xs, wt)
            return y.transpose(0, 1)
        if x.dim() == 2:
            x = x.unsqueeze(1).repeat(1, S, 1)
        y = torch.bmm(w, x.permute(1, 2, 0)).permute(2, 0, 1)
        if b is not None:
            y = y + b
        return y


class BayesBatchNorm2d(Bayes):
    def __init__(self, bn, family, impl):
        super().__init__(family, impl)
        self.eps = bn.eps
        self.register_buffer("running_mean", bn.running_mean.clone())
        self.register_buffer("running_var", bn.running_var.clone())
        self.posterior("weight", bn.weight)
        self.posterior("bias", bn.bias)

    def normalise(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0,
                            self.eps)

    def forward(self, x):
        c = self.running_mean.shape[0]
        if self.seq:  # BayesBatchNorm2dMF outside parallel_eval: an affine draw per example
            out = self.normalise(x)
            w, b = self.draw("weight", x.shape[0]), self.draw("bias", x.shape[0])
            return torch.addcmul(b[:, :, None, None], w[:, :, None, None], out)
        if self.impl == "opt":
            def scale_shift():
                w, b = self.draw("weight"), self.draw("bias")
                scale = w * torch.rsqrt(self.running_var + self.eps)
                return scale[None, :, :, None, None], (b - self.running_mean * scale)[
                    None, :, :, None, None]

            if self.family == "ens":
                scale, shift = self.packed("scale_shift", scale_shift)
            else:
                scale, shift = scale_shift()
            if x.dim() == 4:
                x = x.unsqueeze(1)
            return torch.addcmul(shift, x, scale)
        w, b = self.draw("weight"), self.draw("bias")
        if x.dim() == 4:
            x = x.unsqueeze(1).repeat(1, S, 1, 1, 1)
        out = self.normalise(x.flatten(0, 1))
        return out.view(-1, S, c, out.shape[2], out.shape[3]) * w[None, :, :, None, None] \
            + b[None, :, :, None, None]


def to_bayesian(module, family, impl):
    """Replaces every Conv2d / Linear / BatchNorm2d under `module` (ScalableBDL's to_bayesian)."""
    if isinstance(module, nn.Conv2d):
        return BayesConv2d(module, family, impl)
    if isinstance(module, nn.Linear):
        return BayesLinear(module, family, impl)
    if isinstance(module, nn.BatchNorm2d):
        return BayesBatchNorm2d(module, family, impl)
    for name, child in module.named_children():
        setattr(module, name, to_bayesian(child, family, impl))
    return module


VARIANTS = ("dnn", "ens-last", "mf-last", "mf-all", "mf-all-seq")
TRAIN_VARIANTS = ("dnn-train", "ens-last-train")


def parse_case(case):
    try:
        net, variant = case.split(":")
        arch, size = net.rsplit("-", 1)
        size = int(size)
    except ValueError:
        raise ValueError(f"bad case {case!r}: expected NET-SIZE:VARIANT") from None
    if variant not in VARIANTS + TRAIN_VARIANTS:
        raise ValueError(f"bad case {case!r}: VARIANT is one of "
                         f"{', '.join(VARIANTS + TRAIN_VARIANTS)}")
    if variant in TRAIN_VARIANTS and arch == "lenet5":
        raise ValueError(f"bad case {case!r}: the training variants are for ResNets")
    return arch, size, variant


def build_case(case, impl, use_torchvision=True):
    """(model in eval mode, input channels, size, forward function)."""
    arch, size, variant = parse_case(case)
    net, channels = build_net(arch, size, use_torchvision and variant == "dnn")
    if variant in ("ens-last", "mf-last"):
        family = "ens" if variant == "ens-last" else "mf"
        # LiBRe's last block before the head (docs/design.md section 4).
        if arch == "lenet5":
            net.linear1 = to_bayesian(net.linear1, family, impl)
        else:
            net.layer4[-1] = to_bayesian(net.layer4[-1], family, impl)
    elif variant in ("mf-all", "mf-all-seq"):
        net = to_bayesian(net, "mf", impl)
    net.eval()
    if variant == "mf-all-seq":
        for m in net.modules():
            if isinstance(m, Bayes):
                m.seq = True
        return net, channels, size, lambda x: torch.stack([net(x) for _ in range(S)], 1)
    return net, channels, size, net


def bench(args):
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    warmup = int(os.environ.get("BENCH_WARMUP", "1"))
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"BENCH_DEVICE={device} asked for, but torch sees no CUDA device")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.backends.cudnn.benchmark = os.environ.get("BENCH_CUDNN_BENCHMARK") == "1"
    torch.manual_seed(0)
    if parse_case(args.case)[2] in TRAIN_VARIANTS:
        return bench_train(args, device, sync, warmup)
    net, channels, size, fwd = build_case(args.case, args.impl)
    net.to(device)
    x = torch.rand(args.batch, channels, size, size).to(device)
    precision = os.environ.get("BENCH_PRECISION", "f32")
    if precision == "bf16":
        net.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
        inner = fwd
        fwd = lambda x: inner(x).float()  # noqa: E731
    elif precision != "f32":
        raise RuntimeError(f"BENCH_PRECISION={precision}: expected f32 or bf16")
    nbayes = sum(isinstance(m, Bayes) for m in net.modules())
    print(f"pytorch {args.case} ({args.impl}): {type(net).__module__}.{type(net).__name__}, "
          f"input {list(x.shape)}, {nbayes} Bayesian layers, device {device}, precision {precision}, "
          f"threads {torch.get_num_threads()}, warm-up {warmup}, reps {args.reps}, "
          f"torch {torch.__version__}", file=sys.stderr)
    with torch.no_grad():
        for _ in range(warmup):
            fwd(x)
        sync()
        for _ in range(args.reps):
            t = time.perf_counter()
            fwd(x)
            sync()
            print(f"{args.case} {(time.perf_counter() - t) * 1e3:.3f}", flush=True)


def bench_train(args, device, sync, warmup):
    """Training steps (scripts/libre_train_torch.py): one timed unit = one optimiser step."""
    import libre_train_torch

    if os.environ.get("BENCH_PRECISION", "f32") != "f32":
        raise RuntimeError("training cases run at f32 only (BENCH_PRECISION)")
    arch, size, variant = parse_case(args.case)
    net, channels = build_net(arch, size, variant == "dnn-train")
    net.to(device)
    x = torch.rand(args.batch, channels, size, size).to(device)
    y = torch.randint(net.fc.out_features, (args.batch,)).to(device)
    step = libre_train_torch.make_step(net, variant, args.impl, channels, size,
                                       warmup + args.reps)
    net.to(device)  # the routed layers' members
    print(f"pytorch {args.case} ({args.impl}): {type(net).__module__}.{type(net).__name__}, "
          f"input {list(x.shape)}, device {device}, threads {torch.get_num_threads()}, "
          f"warm-up {warmup}, reps {args.reps}, torch {torch.__version__}", file=sys.stderr)
    for _ in range(warmup):
        step(x, y)
    sync()
    for _ in range(args.reps):
        t = time.perf_counter()
        step(x, y)
        sync()
        print(f"{args.case} {(time.perf_counter() - t) * 1e3:.3f}", flush=True)


# ---------------------------------------------------------------------------------------------
# --check: the implementations against each other on small inputs.


def check():
    torch.manual_seed(0)
    failures = []

    def close(name, a, b, tol=1e-4):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        ok = err <= tol
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: max relative difference {err:.2e}")
        if not ok:
            failures.append(name)

    with torch.no_grad():
        try:
            import torchvision
        except ImportError:
            torchvision = None
            print("  (torchvision not installed: ResNet structure check skipped)")
        if torchvision is not None:
            for name in ("resnet18", "resnet50"):
                tv = getattr(torchvision.models, name)(weights=None).eval()
                own = ResNet(*RESNETS[name]).eval()
                own.load_state_dict(tv.state_dict(), strict=True)
                x = torch.rand(2, 3, 64, 64)
                close(f"{name}: own module tree = torchvision", own(x), tv(x))
        for case, size in (("lenet5-28", 28), ("resnet18-32", 32), ("resnet50-32", 32),
                           ("resnet50-64", 64)):
            arch = case.rsplit("-", 1)[0]
            base, channels = build_net(arch, size, False)
            base.eval()
            for m in base.modules():  # non-trivial running statistics
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
            x = torch.rand(3, channels, size, size)
            want = base(x)
            for variant in VARIANTS[1:]:
                if variant.startswith("mf-all") and arch == "resnet50":
                    continue  # slow; resnet18 covers whole-net conversion
                for impl in ("ref", "opt"):
                    if variant == "mf-all-seq" and impl == "opt":
                        continue
                    net = copy.deepcopy(base)
                    family = "ens" if variant == "ens-last" else "mf"
                    if variant in ("ens-last", "mf-last"):
                        if arch == "lenet5":
                            net.linear1 = to_bayesian(net.linear1, family, impl)
                        else:
                            net.layer4[-1] = to_bayesian(net.layer4[-1], family, impl)
                    else:
                        net = to_bayesian(net, family, impl)
                    net.eval()
                    for m in net.modules():
                        if isinstance(m, Bayes):
                            m.seq = variant == "mf-all-seq"
                            for n, p in m.named_parameters(recurse=False):
                                if n.endswith("_psi"):
                                    p.fill_(-30.0)  # sigma ~ 1e-13: every draw is the mean
                    if variant == "mf-all-seq":
                        got = torch.stack([net(x) for _ in range(S)], 1)
                    else:
                        got = net(x)
                    if tuple(got.shape) != (3, S, want.shape[-1]):
                        failures.append(f"{case}:{variant} {impl} shape")
                        print(f"  FAIL {case}:{variant} ({impl}): shape {list(got.shape)}")
                        continue
                    close(f"{case}:{variant} ({impl}) = the DNN in every sample", got,
                          want.unsqueeze(1).expand_as(got))
            # opt and ref draw the same numbers from the same seed: compare real posteriors.
            for variant in ("ens-last", "mf-last"):
                outs = []
                for impl in ("ref", "opt"):
                    net = copy.deepcopy(base)
                    family = "ens" if variant == "ens-last" else "mf"
                    torch.manual_seed(1)
                    if arch == "lenet5":
                        net.linear1 = to_bayesian(net.linear1, family, impl)
                    else:
                        net.layer4[-1] = to_bayesian(net.layer4[-1], family, impl)
                    for m in net.modules():
                        if isinstance(m, Bayes) and family == "ens":
                            for p in m.parameters(recurse=False):
                                p.add_(0.05 * torch.randn_like(p))  # distinct members
                    net.eval()
                    torch.manual_seed(2)
                    outs.append(net(x))
                close(f"{case}:{variant} opt = ref (same members / draws)", outs[1], outs[0])
    # Training: the two routed-ensemble implementations, outputs and member gradients.
    import libre_train_torch as lt

    base, _ = build_net("resnet18c1", 28, False)
    outs = []
    ids = torch.randint(lt.S, (10,))
    x = torch.rand(10, 1, 28, 28)
    for impl in ("ref", "opt"):
        net = copy.deepcopy(base).train()
        torch.manual_seed(1)
        net.layer4[-1] = lt.to_routed(net.layer4[-1], impl)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, lt.Routed):
                    m.ids = ids
                    for p in m.parameters(recurse=False):
                        p.add_(0.05 * torch.randn_like(p))
        f, logits = lt.features_and_logits(net, x)
        (f.square().sum() + logits.sum()).backward()
        outs.append((f.detach(), net.layer4[-1].conv2.weights.grad))
    close("resnet18c1-28 routed training forward: opt = ref", outs[1][0], outs[0][0])
    close("resnet18c1-28 routed member gradients: opt = ref", outs[1][1], outs[0][1])
    if failures:
        print(f"check: {len(failures)} failed: {', '.join(failures)}", file=sys.stderr)
        sys.exit(1)
    print("check: all implementations agree")


# ---------------------------------------------------------------------------------------------
# --e2e: a plain PyTorch evaluation loop over a libre data file.


def read_safetensors(path):
    """{name: tensor} and the metadata of a safetensors file (the format is a u64 header length,
    a JSON header, then the raw little-endian data)."""
    kinds = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        a = np.frombuffer(data, dtype=kinds[info["dtype"]], count=(hi - lo) //
                          np.dtype(kinds[info["dtype"]]).itemsize, offset=lo)
        out[name] = torch.from_numpy(a.reshape(info["shape"]).copy())
    return out, header.get("__metadata__", {})


def e2e(args):
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    weights, _ = read_safetensors(args.weights)
    data, _ = read_safetensors(args.data)
    images, labels = data["images"], data["labels"]
    if images.dtype != torch.uint8:
        raise ValueError("--e2e expects uint8 images")
    net = LeNet5(images.shape[-1])
    # A libre ensemble stores a converted layer's members as NAME.weight_members [S, ...] and
    # NAME.bias_members [S, out]; every other tensor under its PyTorch name.
    ens = sorted(k[: -len(".weight_members")] for k in weights if k.endswith(".weight_members"))
    for name in ens:
        layer = to_bayesian(getattr(net, name), "ens", args.impl)
        with torch.no_grad():
            layer.weight.copy_(weights.pop(f"{name}.weight_members"))
            layer.bias.copy_(weights.pop(f"{name}.bias_members"))
        setattr(net, name, layer)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k.split(".")[0] not in ens]
    if missing or unexpected:
        raise ValueError(f"{args.weights}: missing {missing}, unexpected {unexpected}")
    variant = "ens-last" if ens == ["linear1"] else ("dnn" if not ens else "ens:" + ",".join(ens))
    net.eval()
    torch.manual_seed(0)
    t = time.perf_counter()
    probs = []
    with torch.no_grad():
        for i in range(0, images.shape[0], args.batch_size):
            x = images[i:i + args.batch_size].float().div_(255)
            p = net(x).softmax(-1)
            probs.append(p.mean(1) if p.dim() == 3 else p)
        probs = torch.cat(probs)
        top1 = (probs.argmax(1) == labels).double().mean().item()
        nll = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean().item()
    secs = time.perf_counter() - t
    n = images.shape[0]
    print(f"e2e:lenet5:{variant} {secs:.4f} {n / secs:.1f} {top1:.4f}")
    print(f"pytorch e2e {variant} ({args.impl}): {n} images, batch {args.batch_size}, top-1 "
          f"{top1:.4f}, NLL {nll:.4f}, threads {torch.get_num_threads()}", file=sys.stderr)


def load_lenet5(path, impl, size=28):
    """A libre LeNet5 checkpoint (safetensors; an ensemble layer's members as
    NAME.weight_members / NAME.bias_members) as the PyTorch module tree; (net, variant)."""
    weights, _ = read_safetensors(path)
    net = LeNet5(size)
    ens = sorted(k[: -len(".weight_members")] for k in weights if k.endswith(".weight_members"))
    for name in ens:
        layer = to_bayesian(getattr(net, name), "ens", impl)
        with torch.no_grad():
            layer.weight.copy_(weights.pop(f"{name}.weight_members"))
            layer.bias.copy_(weights.pop(f"{name}.bias_members"))
        setattr(net, name, layer)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k.split(".")[0] not in ens]
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return net.eval(), ens


def lenet5_with_features(net, x):
    """LeNet5's logits [B, S, K] and the linear1 features [B, S, 200] of one forward (libre's
    LiBRe features: the output of the block holding the last Bayesian layer, after its ReLU)."""
    out = net.maxpool1(net.relu1(net.conv1(x)))
    out = net.maxpool2(net.relu2(net.conv2(out)))
    feats = F.relu(net.linear1(out.flatten(1)))  # [B, S, 200]: the members on a shared input
    return net.linear2(feats), feats


def attack(args):
    """--attack: the PyTorch side of examples/bench_attack.rs, an eager L_inf PGD loop on the
    first IMAGES digits, eps 0.3, step 0.01, uniform random start, one restart.

    attack-step: the mimicry objective (CE of the MC-averaged predictive - C * the linear1
    features' variance over the 20 members, unbiased, averaged over the 200 features; C = 100),
    STEPS steps and one last checking forward; prints the time per step. pgd-STEPS: plain PGD on
    the CE of the predictive alone, no early stop (the classic baseline); prints the whole
    attack's time and its misclassified %. selective-STEPS (needs --threshold T): libre's
    `selective` written in PyTorch, like for like: ascend the CE while the image is classified
    correctly, descend the score once it is not, and drop an image from the batch as soon as it
    is misclassified with a score below T (libre's per-image early stop); prints the whole
    attack's time and its evaded %.

    BENCH_PRECISION=bf16: the network's weights and the forward's input in bfloat16, logits and
    features cast back to float32 (what libre's `--precision bf16` does); the objective, the
    gradient with respect to the float32 image and the step stay float32."""
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    warmup = int(os.environ.get("BENCH_WARMUP", "1"))
    net, ens = load_lenet5(args.weights, args.impl)
    if ens != ["linear1"]:
        raise ValueError(f"{args.weights}: --attack needs linear1 as the only ensemble, got {ens}")
    for p in net.parameters():
        p.requires_grad_(False)
    data, _ = read_safetensors(args.data)
    x = data["images"][: args.images].float().div_(255)
    y = data["labels"][: args.images]
    eps, step, c = 0.3, 0.01, 100.0
    with_score = args.attack_case == "attack-step"
    selective = args.attack_case.startswith("selective-")
    if not with_score and not selective and not args.attack_case.startswith("pgd-"):
        raise ValueError(f"unknown --attack case {args.attack_case!r}: attack-step, pgd-N or "
                         "selective-N")
    if selective and args.threshold is None:
        raise ValueError("--attack selective-N needs --threshold T (the detector's)")
    precision = os.environ.get("BENCH_PRECISION", "f32")
    if precision == "bf16":
        net.to(torch.bfloat16)

        def forward(adv):
            logits, feats = lenet5_with_features(net, adv.to(torch.bfloat16))
            return logits.float(), feats.float()
    elif precision == "f32":
        def forward(adv):
            return lenet5_with_features(net, adv)
    else:
        raise ValueError(f"BENCH_PRECISION={precision}: expected f32 or bf16")

    def run_selective(steps, seed):
        """libre's `selective` with per-image early stop; returns the evaded fraction."""
        torch.manual_seed(seed)
        t = args.threshold
        adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
        lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
        active = torch.arange(x.shape[0])
        evaded = torch.zeros(x.shape[0], dtype=torch.bool)
        a, ya, loa, hia = adv, y, lo, hi
        for i in range(steps + 1):
            a = a.detach().requires_grad_(i < steps)
            with torch.set_grad_enabled(i < steps):
                logits, feats = forward(a)
                p = logits.softmax(-1).mean(1)
                score = feats.var(1).mean(1)
                correct = p.argmax(1) == ya
                done = ~correct & (score < t)
            evaded[active[done]] = True
            keep = ~done
            if i == steps or not keep.any():
                break
            loss = F.nll_loss((p + 1e-10).log(), ya, reduction="none")
            obj = torch.where(correct, loss, -score)
            (g,) = torch.autograd.grad(obj[keep].sum(), a)
            with torch.no_grad():
                a = torch.min(torch.max(a[keep] + step * g[keep].sign(), loa[keep]), hia[keep])
            active, ya, loa, hia = active[keep], ya[keep], loa[keep], hia[keep]
        return evaded.double().mean().item()

    def run(steps, seed):
        torch.manual_seed(seed)
        adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
        lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
        for _ in range(steps):
            adv.requires_grad_(True)
            logits, feats = forward(adv)
            logp = (logits.softmax(-1).mean(1) + 1e-10).log()
            loss = F.nll_loss(logp, y, reduction="none")
            if with_score:
                loss = loss - c * feats.var(1).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), adv)
            with torch.no_grad():
                adv = torch.min(torch.max(adv + step * g.sign(), lo), hi)
        with torch.no_grad():
            logits, _ = forward(adv)
            wrong = (logits.softmax(-1).mean(1).argmax(1) != y).double().mean().item()
        return adv, wrong

    for i in range(warmup):
        (run_selective if selective else run)(2, 1000 + i)
    for r in range(args.reps):
        t = time.perf_counter()
        if selective:
            evaded = run_selective(args.steps, r)
            ms = (time.perf_counter() - t) * 1e3
            print(f"lenet5:{args.attack_case} {ms:.3f}")
            print(f"pytorch {args.attack_case}: evaded {100 * evaded:.1f}% at threshold "
                  f"{args.threshold}", file=sys.stderr)
            continue
        _, wrong = run(args.steps, r)
        ms = (time.perf_counter() - t) * 1e3
        if with_score:
            print(f"lenet5:attack-step {ms / args.steps:.3f}")
        else:
            print(f"lenet5:{args.attack_case} {ms:.3f}")
            print(f"pytorch {args.attack_case}: misclassified {100 * wrong:.1f}%", file=sys.stderr)
    print(f"pytorch --attack {args.attack_case} ({args.impl}): {x.shape[0]} images, "
          f"{args.steps} steps, threads {torch.get_num_threads()}, precision {precision}",
          file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("case", nargs="?")
    p.add_argument("reps", nargs="?", type=int)
    p.add_argument("batch", nargs="?", type=int, default=16)
    p.add_argument("--impl", choices=("ref", "opt"), default="ref")
    p.add_argument("--check", action="store_true")
    p.add_argument("--e2e", nargs=2, metavar=("WEIGHTS", "DATA"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threshold", type=float, help="the detector's threshold (--attack selective-N)")
    p.add_argument("--attack", nargs=6,
                   metavar=("CASE", "WEIGHTS", "DATA", "IMAGES", "STEPS", "REPS"))
    args = p.parse_args()
    try:
        if args.check:
            check()
        elif args.attack:
            args.attack_case, args.weights, args.data = args.attack[:3]
            args.images, args.steps, args.reps = (int(v) for v in args.attack[3:])
            if args.images < 1 or args.steps < 1:
                raise ValueError("IMAGES and STEPS must be >= 1")
            attack(args)
        elif args.e2e:
            args.weights, args.data = args.e2e
            e2e(args)
        elif args.case and args.reps is not None:
            if args.batch < 1:
                raise ValueError("BATCH must be >= 1")
            bench(args)
        else:
            p.error("give CASE REPS [BATCH], --check, --e2e WEIGHTS DATA or --attack ...")
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"bench_vs_pytorch.py: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
