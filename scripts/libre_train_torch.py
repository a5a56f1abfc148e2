"""LiBRe training in plain PyTorch, for timing libre's against: one step (scripts/bench_vs_pytorch.py,
cases NET-SIZE:dnn-train and NET-SIZE:ens-last-train) or a whole fine-tuning run
(scripts/train_vs_pytorch.sh):

    libre_train_torch.py WEIGHTS TRAIN_DATA TEST_DATA [--limit N] [--epochs E] [--batch-size B]
                         [--eval-limit N] [--impl ref|opt] [--device D] [--seed S]

fine-tunes a libre checkpoint of a CIFAR-stem ResNet (safetensors; the names are the PyTorch
module tree) on a libre data file (u8 images [N, C, H, W], int64 labels) in shuffled batches, as
`libre finetune --recipe libre` does with its defaults, then evaluates the 20-member predictive
(mean softmax over the members, batch norm on running statistics) on the first --eval-limit test
images. It prints `train-e2e:IMPL SECONDS IMAGES_PER_S TOP1`: the seconds of the training loop
alone (batches gathered from the u8 tensor, converted, moved to the device, stepped; the
evaluation is not timed, as in libre's metrics.csv `images_per_s`).

The step is the one libre's `detect::objective::step` takes (docs/detection.md, "Training"; the
anchored objective libre trains by default): of a clean batch x [B, C, H, W] with labels y, the
first h = B/2 images are copied and perturbed with uniform noise U(-e, e), e ~ U[lo, hi] per step,
each copy's noise low-pass filtered with probability 0.03 (Gaussian kernel of size 3..11, sigma
~ U[0, 5]), clamped to [0, 1]. One routed forward runs

    [x (B) | x[:h] again (h) | perturbed (h) | perturbed again (h)]

2.5 B images, each through one ensemble member of the last block: x through random members, the
second clean copy through a member distinct from its first, the two perturbed copies through two
distinct members. With f the last block's output and d the per-image mean squared difference
of two members' features,

    loss = CE(logits of x, y) + alpha * mean(ReLU(gamma - d_perturbed) + d_clean)

then SGD: the members with momentum 0.9, lr cosine-annealed per step from 0.05 to 1e-4 and weight
decay 1e-4 / S; every other parameter momentum 0.9, lr 1e-4, weight decay 1e-4 (libre's
`train::libre_groups`). Batch norm runs in training mode on the whole routed batch; a Bayesian
batch norm normalises with the shared batch statistics and applies each image's member affine.

Implementations of the routed layers (`impl`):
  ref  what the reference's code does for a per-image member id (github.com/thudzj/ScalableBDL,
       branch `efficient`, scalablebdl/empirical/conv.py with a list mc_sample_id): gather each
       image's member weight, `weights[idx]` -> [N*out, in, k, k], and run one conv with N
       groups over the batch viewed as [1, N*C, H, W]. The reference's finetune_imagenet.py feeds
       [x, perturbed, perturbed] (2 B images); the extra clean pair here is what the anchored
       objective adds, the same for both sides.
  opt  best-effort: the images sorted by member, one plain conv per member over its images
       (weights cut with unbind, inputs with split: one backward each), put back in order.

`dnn-train` is the plain DNN step for the ratio: CE on x through the point net, SGD with
momentum 0.9 (Nesterov), lr 0.05, weight decay 5e-4 (libre's `train::pretrain_groups`).
"""

import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

S = 20  # ensemble members


class Routed(nn.Module):
    """A layer whose S members are picked per image by `self.ids` ([N] int64, set per step)."""

    def __init__(self, impl):
        super().__init__()
        self.impl = impl
        self.ids = None


class RoutedConv2d(Routed):
    def __init__(self, conv, impl):
        super().__init__(impl)
        assert conv.bias is None and conv.groups == 1, "ResNet convs: no bias, no groups"
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.out_channels = conv.out_channels
        w = conv.weight.detach()
        self.weights = nn.Parameter(w.unsqueeze(0).repeat(S, 1, 1, 1, 1))

    def conv(self, x, w, groups=1):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, groups)

    def forward(self, x):
        n = x.shape[0]
        if self.impl == "ref":  # scalablebdl/empirical/conv.py, mc_sample_id a list
            w = self.weights[self.ids].view(n * self.out_channels, *self.weights.shape[2:])
            y = self.conv(x.reshape(1, -1, *x.shape[2:]), w, n)
            return y.view(n, self.out_channels, *y.shape[2:])
        return segmented(x, self.ids, lambda m, xm, ws: self.conv(xm, ws[m]),
                         self.weights.unbind(0))


class RoutedBatchNorm2d(Routed):
    def __init__(self, bn, impl):
        super().__init__(impl)
        self.eps, self.momentum = bn.eps, bn.momentum
        self.register_buffer("running_mean", bn.running_mean.clone())
        self.register_buffer("running_var", bn.running_var.clone())
        self.weights = nn.Parameter(bn.weight.detach().unsqueeze(0).repeat(S, 1))
        self.biases = nn.Parameter(bn.bias.detach().unsqueeze(0).repeat(S, 1))

    def forward(self, x):
        # scalablebdl/empirical/batchnorm.py: shared batch statistics, each image's member affine.
        out = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training,
                           self.momentum, self.eps)
        return out * self.weights[self.ids][:, :, None, None] + \
            self.biases[self.ids][:, :, None, None]


def segmented(x, ids, f, ws):
    """f(member, its images, ws) for each member with images, in the original image order."""
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=S).tolist()
    chunks = x[order].split([c for c in counts if c > 0])
    members = [m for m, c in enumerate(counts) if c > 0]
    y = torch.cat([f(m, xm, ws) for m, xm in zip(members, chunks)])
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return y[inv]


def to_routed(module, impl):
    if isinstance(module, nn.Conv2d):
        return RoutedConv2d(module, impl)
    if isinstance(module, nn.BatchNorm2d):
        return RoutedBatchNorm2d(module, impl)
    if isinstance(module, nn.Linear):
        raise ValueError("routed Linear layers are not written here (ResNet last blocks only)")
    for name, child in module.named_children():
        setattr(module, name, to_routed(child, impl))
    return module


def features_and_logits(net, x):
    """The ResNet forward returning the last block's output (LiBRe's features) and the logits."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    f = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return f, net.fc(torch.flatten(net.avgpool(f), 1))


def gaussian_kernel(k, sigma, device):
    sigma = max(sigma, 1e-3)
    r = torch.arange(k, dtype=torch.float32, device=device) - k // 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def perturb(x, eps, blur_prob):
    """libre's detect::objective::perturb: U(-eps, eps) noise, low-pass filtered per image with
    probability blur_prob, clamped to [0, 1]."""
    noise = (torch.rand_like(x) * 2 - 1) * eps
    c = x.shape[1]
    draws = torch.rand(x.shape[0], 3, dtype=torch.float64).tolist()
    rows = []
    for i, (u, kdraw, sdraw) in enumerate(draws):
        if u < blur_prob:
            k = (3, 5, 7, 9, 11)[min(int(kdraw * 5), 4)]
            w = gaussian_kernel(k, sdraw * 5, x.device).view(1, 1, k, k).repeat(c, 1, 1, 1)
            noise_i = F.conv2d(noise[i:i + 1], w, None, 1, k // 2, 1, c)
            rows.append(noise_i)
        else:
            rows.append(noise[i:i + 1])
    return (x + torch.cat(rows)).clamp(0, 1)


class LibreStep:
    """One optimiser step of the anchored LiBRe objective (module docs) on a ResNet `net` whose
    layer4[-1] becomes the routed ensemble."""

    def __init__(self, net, impl, total_steps, noise_eps, alpha=1.0, gamma=0.5, blur_prob=0.03,
                 lr=0.05, ft_lr=1e-4, decay=1e-4):
        net.layer4[-1] = to_routed(net.layer4[-1], impl)
        self.net = net.train()
        self.routed = [m for m in net.modules() if isinstance(m, Routed)]
        members = [p for m in self.routed for p in m.parameters(recurse=False)]
        ids = {id(p) for p in members}
        rest = [p for p in net.parameters() if id(p) not in ids]
        self.opt = torch.optim.SGD([
            {"params": rest, "lr": ft_lr, "momentum": 0.9, "weight_decay": decay},
            {"params": members, "lr": lr, "momentum": 0.9, "weight_decay": decay / S},
        ])
        self.lr, self.ft_lr, self.total = lr, ft_lr, max(total_steps, 1)
        self.noise_eps, self.alpha, self.gamma, self.blur_prob = noise_eps, alpha, gamma, blur_prob
        self.t = 0

    def __call__(self, x, y):
        # Cosine schedule of the members' lr, per step (libre's Schedule::Cosine).
        cos = 0.5 * (1 + math.cos(math.pi * min(self.t, self.total) / self.total))
        self.opt.param_groups[1]["lr"] = self.ft_lr + (self.lr - self.ft_lr) * cos
        self.t += 1
        b = x.shape[0]
        h = max(b // 2, 1)
        lo, hi = self.noise_eps
        e = lo + (hi - lo) * torch.rand(1, dtype=torch.float64).item()
        src = x[:h]
        xp = perturb(src, e, self.blur_prob)
        r = torch.randint(S, (b,))
        p1 = torch.randint(S, (h,))
        p2 = (p1 + torch.randint(1, S, (h,))) % S
        second = (r[:h] + torch.randint(1, S, (h,))) % S
        ids = torch.cat([r, second, p1, p2]).to(x.device)
        for m in self.routed:
            m.ids = ids
        f, logits = features_and_logits(self.net, torch.cat([x, src, xp, xp]))
        d = lambda a, c: (a - c).square().flatten(1).mean(1)  # noqa: E731
        d_clean = d(f[:h], f[b:b + h])
        d_pert = d(f[b + h:b + 2 * h], f[b + 2 * h:])
        loss = F.cross_entropy(logits[:b], y) + \
            self.alpha * ((self.gamma - d_pert).relu() + d_clean).mean()
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        self.opt.step()
        return loss


class DnnStep:
    def __init__(self, net, lr=0.05, decay=5e-4):
        self.net = net.train()
        self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                   weight_decay=decay)

    def __call__(self, x, y):
        loss = F.cross_entropy(self.net(x), y)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        self.opt.step()
        return loss


def customary_eps(channels, size):
    """libre's detect::objective::customary_eps: the data set's usual l_inf attack eps."""
    if channels == 1 and size <= 32:
        return 0.3
    return 8 / 255 if size <= 64 else 16 / 255


def make_step(net, variant, impl, channels, size, total_steps):
    if variant == "dnn-train":
        return DnnStep(net)
    eps = customary_eps(channels, size)
    return LibreStep(net, impl, total_steps, (0.5 * eps, min(2 * eps, 1.0)))


# ---------------------------------------------------------------------------------------------
# A whole fine-tuning run (scripts/train_vs_pytorch.sh).


def evaluate_members(net, images, labels, batch, device):
    """Top-1 of the member-averaged softmax, batch norm on running statistics. Always through
    the sorted routing (`opt`; with one member per pass it is a plain conv): the reference's
    gathered weights give the same numbers (--check) and took minutes here, untimed."""
    net.eval()
    routed = [m for m in net.modules() if isinstance(m, Routed)]
    for m in routed:
        m.impl = "opt"
    correct = 0
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x = images[i:i + batch].to(device).float().div_(255)
            p = 0
            for s in range(S):
                ids = torch.full((x.shape[0],), s, dtype=torch.long, device=device)
                for m in routed:
                    m.ids = ids
                p = p + net(x).softmax(-1)
            correct += (p.argmax(1).cpu() == labels[i:i + batch]).sum().item()
    net.train()
    return correct / images.shape[0]


def main():
    import bench_vs_pytorch as bvp

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights")
    ap.add_argument("train_data")
    ap.add_argument("test_data")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--impl", choices=("ref", "opt"), default="opt")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    weights, meta = bvp.read_safetensors(args.weights)
    model = __import__("json").loads(meta["libre"])["model"]
    if model["arch"] != "resnet18" or not model["cifar_stem"] or model["normalization"]:
        raise ValueError(f"{args.weights}: expected a CIFAR-stem ResNet-18 without input "
                         f"normalisation, got {model}")
    block, layers = bvp.RESNETS["resnet18"]
    net = bvp.ResNet(block, layers, model["num_classes"], True, model["in_channels"])
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{args.weights}: missing {missing}, unexpected {unexpected}")
    train, _ = bvp.read_safetensors(args.train_data)
    test, _ = bvp.read_safetensors(args.test_data)
    images, labels = train["images"], train["labels"]
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    n, (c, size) = images.shape[0], images.shape[1:3]
    torch.manual_seed(args.seed)
    net.to(device)
    steps = args.epochs * math.ceil(n / args.batch_size)
    step = make_step(net, "ens-last-train", args.impl, c, size, steps)
    net.to(device)
    sync()
    t = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(n).split(args.batch_size):
            x = images[idx].to(device).float().div_(255)
            y = labels[idx].to(device).long()
            step(x, y)
    sync()
    secs = time.perf_counter() - t
    top1 = evaluate_members(net, test["images"][:args.eval_limit],
                            test["labels"][:args.eval_limit], 250, device)
    print(f"train-e2e:{args.impl} {secs:.3f} {args.epochs * n / secs:.2f} {top1:.4f}")
    print(f"pytorch LiBRe fine-tuning ({args.impl}): {n} images x {args.epochs} epoch(s), batch "
          f"{args.batch_size}, {steps} steps, device {device}, threads {torch.get_num_threads()}, "
          f"test top-1 {top1:.4f} on {min(args.eval_limit, test['images'].shape[0])} images",
          file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"libre_train_torch.py: {e}", file=sys.stderr)
        sys.exit(2)
