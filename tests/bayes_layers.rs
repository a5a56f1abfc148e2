//! Layer-level checks of the parallel-MC wide / grouped ops against per-member reference ops
//! (docs/design.md section 2: Conv2d with any stride, padding, dilation and groups incl.
//! depth-wise; BatchNorm1d; PReLU). Ensemble members are explicit tensors, so member s of the
//! parallel output must equal the plain op with member s's weights.

use libre::bayes::{
    batch_norm1d, conv2d, prelu, Act, BatchNormConfig, BayesLayer, ConvConfig, Ctx, Family,
    ForwardMode, PosteriorConfig,
};
use tch::{nn, Device, Kind, Tensor};

const S: i64 = 3;

fn members(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()[name].shallow_clone()
}

fn perturb(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (n, mut t) in vs.variables() {
            if n.ends_with("_members") {
                let _ = t.g_add_(&(t.randn_like() * 0.1));
            }
        }
    });
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}");
    let d = (a - b).abs().max().double_value(&[]);
    assert!(d < 1e-5, "{what}: {d}");
}

#[test]
fn grouped_and_depthwise_convs_match_per_member_convs() {
    tch::set_num_threads(1);
    let cases = [
        (
            4,
            6,
            3,
            ConvConfig {
                stride: 2,
                padding: 2,
                dilation: 2,
                groups: 2,
                bias: true,
            },
        ),
        (
            4,
            4,
            3,
            ConvConfig {
                stride: 1,
                padding: 1,
                dilation: 1,
                groups: 4,
                bias: false,
            },
        ),
        (3, 5, 1, ConvConfig::default()),
    ];
    for (c_in, c_out, k, cfg) in cases {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut conv = conv2d(&(vs.root() / "c"), c_in, c_out, k, cfg);
        conv.convert(&vs, &PosteriorConfig::new(Family::Ensemble, S as usize))
            .unwrap();
        perturb(&vs);
        let w = members(&vs, "c.weight_members");
        let b = cfg.bias.then(|| members(&vs, "c.bias_members"));
        let x = Tensor::randn([2, c_in, 9, 9], (Kind::Float, Device::Cpu));
        let ctx = Ctx::new(
            &ForwardMode::ParallelMc {
                samples: S as usize,
            },
            2,
        )
        .unwrap();
        // Trunk input (no sample axis): one wide conv.
        let y = conv.forward(&Act::new(x.shallow_clone()), &ctx).unwrap();
        assert_eq!(y.samples, Some(S));
        // Input with a sample axis: one grouped conv.
        let xs = Tensor::randn([2, S, c_in, 9, 9], (Kind::Float, Device::Cpu));
        let ys = conv
            .forward(&Act::with(xs.shallow_clone(), Some(S)), &ctx)
            .unwrap();
        let refconv = |x: &Tensor, s: i64| {
            x.conv2d(
                &w.get(s),
                b.as_ref().map(|b| b.get(s)).as_ref(),
                [cfg.stride, cfg.stride],
                [cfg.padding, cfg.padding],
                [cfg.dilation, cfg.dilation],
                cfg.groups,
            )
        };
        for s in 0..S {
            close(
                &y.t.select(1, s),
                &refconv(&x, s),
                &format!("wide {cfg:?} s={s}"),
            );
            close(
                &ys.t.select(1, s),
                &refconv(&xs.select(1, s), s),
                &format!("grouped {cfg:?}"),
            );
        }
    }
}

#[test]
fn batchnorm1d_and_prelu_carry_the_sample_axis() {
    tch::set_num_threads(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut bn = batch_norm1d(&(vs.root() / "bn"), 5, BatchNormConfig::default());
    let mut act = prelu(&(vs.root() / "act"), 5);
    let cfg = PosteriorConfig::new(Family::Ensemble, S as usize);
    bn.convert(&vs, &cfg).unwrap();
    act.convert(&vs, &cfg).unwrap();
    perturb(&vs);
    tch::no_grad(|| {
        let _ = bn.running_mean.shallow_clone().uniform_(-1.0, 1.0);
        let _ = bn.running_var.shallow_clone().uniform_(0.5, 2.0);
    });
    let x = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
    let ctx = Ctx::new(
        &ForwardMode::ParallelMc {
            samples: S as usize,
        },
        4,
    )
    .unwrap();
    let y = act
        .forward(
            &bn.forward(&Act::new(x.shallow_clone()), &ctx).unwrap(),
            &ctx,
        )
        .unwrap();
    assert_eq!(y.t.size(), vec![4, S, 5]);
    let (g, b, a) = (
        members(&vs, "bn.weight_members"),
        members(&vs, "bn.bias_members"),
        members(&vs, "act.weight_members"),
    );
    for s in 0..S {
        let n = x.batch_norm(
            Some(&g.get(s)),
            Some(&b.get(s)),
            Some(&bn.running_mean),
            Some(&bn.running_var),
            false,
            0.1,
            1e-5,
            false,
        );
        close(&y.t.select(1, s), &n.prelu(&a.get(s)), &format!("s={s}"));
    }
    // Training mode updates the shared running statistics once per forward.
    let before = bn.running_mean.copy();
    let ctx = Ctx::new(&ForwardMode::DeterministicTrain, 4).unwrap();
    let _ = bn.forward(&Act::new(x), &ctx).unwrap();
    assert!((&bn.running_mean - before).abs().max().double_value(&[]) > 0.0);
    assert_eq!(bn.num_batches_tracked.int64_value(&[]), 1);
}
