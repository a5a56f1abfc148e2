//! The sample axis's fast paths against the grouped-conv oracle (issue 14): ResNet-18 at 32 px
//! runs its last stage on 1x1 maps, where an S-weight conv is a matmul over the centre tap. In its
//! own test binary because the switch is process-wide.

use libre::bayes::set_fast_paths;
use libre::bayes::{
    Family, ForwardMode, LayerSelection, McDraws, McSampling, PosteriorConfig, Routing,
    TrainSampling,
};
use libre::models::{self, ModelConfig};
use tch::{Device, Kind, Tensor};

/// The fast-path switch and libtorch's generator are process-wide: the tests of this binary take
/// turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Runs `f` with the fast paths on or off (the oracle), then switches them back on.
fn with_fast_paths<T>(on: bool, f: impl FnOnce() -> T) -> T {
    set_fast_paths(on);
    let out = f();
    set_fast_paths(true);
    out
}

/// Adds `scale` x N(0, 1) in place to the variables whose names `pick` accepts: members that
/// differ, so a mix-up of the sample axis shows (also an optimiser-like in-place step).
fn perturb(m: &dyn models::BayesModel, pick: impl Fn(&str) -> bool, scale: f64) {
    tch::no_grad(|| {
        for (n, mut t) in m.var_store().variables() {
            if pick(&n) {
                let _ = t.g_add_(&(t.randn_like() * scale));
            }
        }
    });
}

#[test]
fn centre_tap_matmul_equals_the_grouped_conv() {
    let _serial = serial();
    tch::manual_seed(0);
    let cfg = ModelConfig::resnet(18, 10, 32, false);
    let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    for (family, layers) in [
        (Family::Ensemble, "last-block"),
        (Family::MeanField, "last-block"),
        // layer4.0 meets a 2x2 map (no fast path) and feeds 1x1 maps with a sample axis.
        (Family::Ensemble, "layer4.*"),
        (Family::LowRank, "last-block"),
    ] {
        let mut m = models::build(&cfg, Device::Cpu).unwrap();
        m.convert(
            &layers.parse::<LayerSelection>().unwrap(),
            &PosteriorConfig::new(family, 5),
        )
        .unwrap();
        // Members that differ, so a mix-up of the sample axis would show.
        perturb(
            m.as_ref(),
            |n| n.ends_with("_members") || n.ends_with("_psi") || n.contains("_lr_"),
            0.05,
        );
        let mode = ForwardMode::ParallelMc { samples: 5 };
        let run = |fast: bool| {
            with_fast_paths(fast, || {
                tch::manual_seed(3); // the same weight draws for a sampling posterior
                tch::no_grad(|| m.forward_mc_with_features(&x, &mode)).unwrap()
            })
        };
        let _ = run(true); // packs an ensemble's centre taps (kept while the members are unchanged)
        let ((y_fast, f_fast), (y_ref, f_ref)) = (run(true), run(false));
        assert_eq!(y_fast.size(), [4, 5, 10]);
        let (dy, df) = (max_diff(&y_fast, &y_ref), max_diff(&f_fast, &f_ref));
        assert!(
            dy <= 1e-5 && df <= 1e-5,
            "{family} {layers}: logits {dy}, features {df}"
        );
        // The members really differ (the comparison is not between identical copies).
        assert!(y_fast.std_dim(1, false, false).max().double_value(&[]) > 1e-4);
        // A step on the members (in place, as the optimiser does) is seen by the next forward:
        // the packed layout belongs to the old version.
        perturb(m.as_ref(), |n| n.ends_with("_members"), 0.05);
        let ((y2, _), (y2_ref, _)) = (run(true), run(false));
        assert!(
            max_diff(&y2, &y2_ref) <= 1e-5,
            "{family} {layers}: stale packed weights"
        );
        // Gradients with respect to the input flow through the fast path too (attacks).
        let xg = x.copy().set_requires_grad(true);
        set_fast_paths(true);
        let (y, _) = m.forward_mc_with_features(&xg, &mode).unwrap();
        y.sum(Kind::Float).backward();
        assert!(xg.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}

/// The correlation over the samples of logit 0 between examples 0 and 1 of `[B, S, K]`.
fn corr(y: &Tensor) -> f64 {
    let a = y.select(0, 0).select(1, 0);
    let b = y.select(0, 1).select(1, 0);
    let (a, b) = (&a - a.mean(Kind::Float), &b - b.mean(Kind::Float));
    (&a * &b).mean(Kind::Float).double_value(&[])
        / (a.std(false).double_value(&[]) * b.std(false).double_value(&[]))
}

/// Per-example mean and standard deviation over the sample axis of `[B, S, K]` logits.
fn moments(y: &Tensor) -> (Tensor, Tensor) {
    (y.mean_dim(1, false, Kind::Float), y.std_dim(1, true, false))
}

/// Runs `m`'s parallel MC forward with `draws`, seeded.
fn mc(m: &mut dyn models::BayesModel, x: &Tensor, s: usize, draws: McDraws) -> Tensor {
    m.set_mc_draws(draws);
    tch::manual_seed(11);
    tch::no_grad(|| m.forward_mc(x, &ForwardMode::ParallelMc { samples: s })).unwrap()
}

/// Local reparameterisation draws each example's outputs from the distribution a weight sample
/// gives it, so the per-example predictive must match the weight-sample forward's (only the
/// correlation between examples differs). An all-mean-field MLP: every layer is a Linear, so
/// every layer takes the local path, and the ReLUs make the logits non-Gaussian.
#[test]
fn local_reparam_draws_the_per_example_predictive_of_weight_samples() {
    let _serial = serial();
    tch::manual_seed(0);
    let cfg = ModelConfig::mlp(1, 8, vec![32, 16], 5);
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    let mut pc = PosteriorConfig::new(Family::MeanField, 20);
    pc.psi_init = (-2.0, -1.5); // sigma 0.14-0.22: noise that moves the logits
    m.convert(&LayerSelection::All, &pc).unwrap();
    let x = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    let s = 20_000;
    let (yw, yl) = (
        mc(m.as_mut(), &x, s, McDraws::Weights),
        mc(m.as_mut(), &x, s, McDraws::LocalReparam),
    );
    assert_eq!(yl.size(), [3, s as i64, 5]);
    let ((mw, sw), (ml, sl)) = (moments(&yw), moments(&yl));
    // The noise is substantial, so agreement below is not between two near-point forwards.
    assert!(sw.min().double_value(&[]) > 0.05, "weight-sample std {sw}");
    // Means within 5 standard errors, standard deviations within 5 %.
    let se = (&sw * &sw / s as f64 + &sl * &sl / s as f64).sqrt();
    let z = ((&mw - &ml).abs() / se).max().double_value(&[]);
    assert!(z < 5.0, "means differ by {z} standard errors:\n{mw}\n{ml}");
    let r = (&sl / &sw - 1.0).abs().max().double_value(&[]);
    assert!(r < 0.05, "std ratio off by {r}:\n{sw}\n{sl}");
    // Different examples get independent draws (a weight sample shared by the batch correlates
    // them): the correlation of the first logit between examples 0 and 1 is near 0 locally.
    assert!(
        corr(&yl).abs() < 0.05,
        "local draws correlated: {}",
        corr(&yl)
    );
    assert!(
        corr(&yw) > 0.1,
        "weight samples uncorrelated: {}",
        corr(&yw)
    );
}

/// On ResNet-18's 1x1 maps the local path of a mean-field last block: the same per-example
/// predictive as weight samples, the means' forward when sigma is ~0, and input gradients.
#[test]
fn local_reparam_on_1x1_maps_matches_weight_samples() {
    let _serial = serial();
    tch::manual_seed(0);
    let cfg = ModelConfig::resnet(18, 10, 32, false);
    let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    let mut pc = PosteriorConfig::new(Family::MeanField, 20);
    pc.psi_init = (-3.0, -2.5);
    // One 3x3 conv on a 1x1 map: its weight draws (2.4 M per sample) keep the oracle affordable.
    let sel: LayerSelection = "layer4.1.conv2".parse().unwrap();
    m.convert(&sel, &pc).unwrap();
    let s = 300;
    let (yw, yl) = (
        mc(m.as_mut(), &x, s, McDraws::Weights),
        mc(m.as_mut(), &x, s, McDraws::LocalReparam),
    );
    let ((mw, sw), (ml, sl)) = (moments(&yw), moments(&yl));
    assert!(sw.min().double_value(&[]) > 1e-3, "weight-sample std {sw}");
    let se = (&sw * &sw / s as f64 + &sl * &sl / s as f64).sqrt();
    let z = ((&mw - &ml).abs() / se).max().double_value(&[]);
    assert!(z < 5.0, "means differ by {z} standard errors:\n{mw}\n{ml}");
    let r = (&sl / &sw - 1.0).abs().max().double_value(&[]);
    assert!(r < 0.3, "std ratio off by {r}:\n{sw}\n{sl}");
    // The local path ran: its draws are independent between examples.
    let (cl, cw) = (corr(&yl), corr(&yw));
    assert!(
        cl.abs() < 0.25 && cw > 0.5,
        "correlations: local {cl}, weights {cw}"
    );

    // sigma ~ 1e-13: every draw is the means' forward.
    let mut m0 = models::build(&cfg, Device::Cpu).unwrap();
    pc.psi_init = (-30.0, -29.9);
    m0.convert(&"last-block".parse().unwrap(), &pc).unwrap();
    let y0 = mc(m0.as_mut(), &x, 4, McDraws::LocalReparam);
    let det = tch::no_grad(|| m0.forward_mc(&x, &ForwardMode::Deterministic)).unwrap();
    assert!(max_diff(&y0, &det.expand([2, 4, 10], false)) <= 1e-4);
    // Attacks differentiate through it.
    let xg = x.copy().set_requires_grad(true);
    let y = m0
        .forward_mc(&xg, &ForwardMode::ParallelMc { samples: 4 })
        .unwrap();
    y.sum(Kind::Float).backward();
    assert!(xg.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// BatchNorm folded into the preceding conv for inference (and 1x1 maps as matmuls) equals the
/// unfused forward, follows the running statistics when a training forward updates them, and
/// passes input gradients.
#[test]
fn folded_batchnorm_equals_the_unfused_forward() {
    let _serial = serial();
    tch::manual_seed(0);
    for (depth, size) in [(18, 32), (50, 32), (18, 64)] {
        let cfg = ModelConfig::resnet(depth, 10, size, false);
        let mut m = models::build(&cfg, Device::Cpu).unwrap();
        // Statistics and affines away from the identity, so a wrong fold shows.
        tch::no_grad(|| {
            for (n, mut t) in m.var_store().variables() {
                if n.contains("bn") || n.contains("downsample.1") {
                    if n.ends_with("running_var") {
                        t.copy_(&(t.rand_like() + 0.5));
                    } else if !n.ends_with("num_batches_tracked") {
                        let _ = t.g_add_(&(t.randn_like() * 0.2));
                    }
                }
            }
        });
        let x = Tensor::rand([3, 3, size, size], (Kind::Float, Device::Cpu));
        let det = ForwardMode::Deterministic;
        let run =
            |fast: bool| with_fast_paths(fast, || tch::no_grad(|| m.forward_mc(&x, &det)).unwrap());
        let _ = run(true); // folds
        let (y, y_ref) = (run(true), run(false));
        let d = max_diff(&y, &y_ref);
        let scale = y_ref.abs().max().double_value(&[]);
        assert!(
            scale > 0.1,
            "ResNet-{depth}: logits too small to compare ({scale})"
        );
        assert!(d <= 1e-5 * scale.max(1.0), "ResNet-{depth} {size} px: {d}");
        // A training forward moves the running statistics in place: the fold follows.
        let _ = m
            .forward_mc(&(x.rand_like() * 2.0), &ForwardMode::DeterministicTrain)
            .unwrap();
        let (y2, y2_ref) = (run(true), run(false));
        assert!(max_diff(&y2, &y_ref) > 1e-4, "the statistics did not move");
        assert!(
            max_diff(&y2, &y2_ref) <= 1e-5 * scale.max(1.0),
            "ResNet-{depth}: stale fold"
        );
        let xg = x.copy().set_requires_grad(true);
        m.forward_mc(&xg, &det).unwrap().sum(Kind::Float).backward();
        assert!(xg.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // An ensemble last block over these statistics: its BatchNorms' S affines and the
        // normalisation run as one scale and shift per member.
        m.convert(
            &LayerSelection::LastBlock,
            &PosteriorConfig::new(Family::Ensemble, 3),
        )
        .unwrap();
        perturb(m.as_ref(), |n| n.ends_with("_members"), 0.1);
        let par = ForwardMode::ParallelMc { samples: 3 };
        let run =
            |fast: bool| with_fast_paths(fast, || tch::no_grad(|| m.forward_mc(&x, &par)).unwrap());
        let (y, y_ref) = (run(true), run(false));
        assert!(y.std_dim(1, false, false).max().double_value(&[]) > 1e-3);
        let d = max_diff(&y, &y_ref);
        assert!(d <= 1e-5 * scale.max(1.0), "ResNet-{depth} ensemble: {d}");
    }
}

/// A LiBRe training forward (each example routed through one member) on 1x1 maps: the centre-tap
/// bmm gives the grouped conv's logits and member gradients.
#[test]
fn routed_training_forward_on_1x1_maps_equals_the_grouped_conv() {
    let _serial = serial();
    tch::manual_seed(0);
    let cfg = ModelConfig::resnet(18, 10, 32, false);
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    m.convert(
        &LayerSelection::LastBlock,
        &PosteriorConfig::new(Family::Ensemble, 4),
    )
    .unwrap();
    perturb(m.as_ref(), |n| n.ends_with("_members"), 0.05);
    let x = Tensor::rand([6, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mode = ForwardMode::Train(TrainSampling {
        sampling: McSampling::PerExample,
        routing: Routing::Given(vec![0, 3, 1, 3, 2, 0]),
        rows: None,
    });
    let members = |m: &dyn models::BayesModel| {
        m.var_store()
            .variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with("conv2.weight_members"))
            .map(|(_, t)| t)
            .next()
            .expect("an ensemble conv")
    };
    let run = |fast: bool| {
        with_fast_paths(fast, || {
            m.var_store().variables().values().for_each(|t| {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            });
            let y = m.forward_mc(&x, &mode).unwrap();
            y.square().sum(Kind::Float).backward();
            (y.detach(), members(m.as_ref()).grad().copy())
        })
    };
    let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
    assert_eq!(y.size(), [6, 1, 10]);
    assert!(
        max_diff(&y, &y_ref) <= 1e-5,
        "logits {}",
        max_diff(&y, &y_ref)
    );
    let scale = g_ref.abs().max().double_value(&[]);
    assert!(scale > 0.0);
    assert!(
        max_diff(&g, &g_ref) <= 1e-5 * scale.max(1.0),
        "member gradients"
    );
}

/// Separable max pooling (inference) equals libtorch's max_pool2d value for value, for LeNet5's
/// 2x2 and the ResNet stem's padded 3x3 stride 2, on even and odd maps, with ties and NaN; with a
/// gradient the plain op runs (its backward sends a tied window's gradient to one element).
#[test]
fn separable_max_pool_equals_max_pool2d() {
    use libre::bayes::pool::max_pool2d;
    let _serial = serial();
    tch::manual_seed(0);
    let plain = |x: &Tensor, k, s, p| x.max_pool2d([k, k], [s, s], [p, p], [1, 1], false);
    for (shape, k, s, p) in [
        ([3, 4, 24, 24], 2, 2, 0),
        ([3, 4, 7, 9], 2, 2, 0),
        ([2, 5, 112, 112], 3, 2, 1),
        ([2, 5, 7, 10], 3, 2, 1),
        ([2, 5, 9, 9], 3, 1, 1),
    ] {
        // Rounded values give ties inside windows; a NaN must propagate as libtorch's does.
        let x = (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 2.0).round();
        let _ = x.get(0).get(0).get(1).get(1).fill_(f64::NAN);
        let want = plain(&x, k, s, p);
        let got = max_pool2d(&x, k, s, p);
        assert_eq!(got.size(), want.size(), "{shape:?} k{k} s{s} p{p}");
        assert!(
            got.isnan().equal(&want.isnan())
                && got
                    .nan_to_num(0., 0., 0.)
                    .equal(&want.nan_to_num(0., 0., 0.)),
            "{shape:?} k{k} s{s} p{p}: values differ"
        );
    }
    // A window larger than the map is libtorch's error, not a silent empty tensor.
    let small = Tensor::rand([1, 1, 2, 2], (Kind::Float, Device::Cpu));
    assert!(std::panic::catch_unwind(|| max_pool2d(&small, 3, 2, 0)).is_err());

    // Under a gradient: the plain op's backward (one element per tied window).
    let x = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    max_pool2d(&x, 2, 2, 0).sum(Kind::Float).backward();
    let g = x.grad();
    assert_eq!(g.sum(Kind::Float).double_value(&[]), 4.0);
    assert_eq!(g.eq(1.0).sum(Kind::Int64).int64_value(&[]), 4, "{g}");

    // LeNet5 end to end: the fast forward equals the oracle's.
    let m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let run = |fast: bool| {
        with_fast_paths(fast, || {
            tch::no_grad(|| m.forward_mc(&x, &ForwardMode::Deterministic)).unwrap()
        })
    };
    let (fast, oracle) = (run(true), run(false));
    assert!(fast.equal(&oracle));
}

/// One LiBRe training step with the shared trunk (the 1.5 B distinct images once, batch norm
/// statistics over the 2.5 B routed images; `TrainSampling::rows`) and the segmented routed convs
/// equals the oracle step over the expanded batch (fast paths off): loss, disagreements, clean
/// logits, every gradient and the batch norms' running statistics. Nets with batch norm in the
/// trunk and in the Bayesian block (ResNet-18, Fashion-MNIST shape), without batch norm
/// (LeNet5), a mean-field last block (local reparameterisation draws per routed image) and the
/// reference objective (no clean pairs).
#[test]
fn libre_step_on_distinct_rows_equals_the_expanded_batch() {
    use libre::detect::objective::{step, LibreConfig, ObjectiveKind};
    let _serial = serial();
    let resnet = ModelConfig {
        in_channels: 1,
        ..ModelConfig::resnet(18, 10, 28, true)
    };
    let cases = [
        (resnet.clone(), Family::Ensemble, ObjectiveKind::Anchored),
        (resnet, Family::MeanField, ObjectiveKind::Anchored),
        (
            ModelConfig::lenet5(),
            Family::Ensemble,
            ObjectiveKind::Reference,
        ),
    ];
    for (cfg, family, objective) in cases {
        tch::manual_seed(3);
        let mut m = models::build(&cfg, Device::Cpu).unwrap();
        m.convert(&LayerSelection::LastBlock, &PosteriorConfig::new(family, 4))
            .unwrap();
        perturb(m.as_ref(), |n| n.ends_with("_members"), 0.05);
        let x = Tensor::rand([7, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [7], (Kind::Int64, Device::Cpu));
        let lcfg = LibreConfig {
            blur_prob: 0.5, // some blurred copies
            ..LibreConfig::for_attack_eps(objective, 0.3)
        };
        let vars = |m: &dyn models::BayesModel| {
            let mut v: Vec<(String, Tensor)> = m.var_store().variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let before: Vec<Tensor> = vars(m.as_ref()).iter().map(|(_, t)| t.copy()).collect();
        let run = |fast: bool| {
            // Same state and seed for both: the step's draws come in the same order.
            tch::no_grad(|| {
                for ((_, mut t), b) in vars(m.as_ref()).into_iter().zip(&before) {
                    t.copy_(b);
                    let mut g = t.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
            });
            tch::manual_seed(9);
            with_fast_paths(fast, || {
                let o = step(m.as_ref(), &x, &y, &lcfg).unwrap();
                o.loss.backward();
                let grads: Vec<Tensor> = vars(m.as_ref())
                    .iter()
                    .map(|(_, t)| {
                        let g = t.grad();
                        if g.defined() {
                            g.copy()
                        } else {
                            t.zeros_like()
                        }
                    })
                    .collect();
                // Running statistics moved in place by the training forward.
                let state: Vec<Tensor> = vars(m.as_ref()).iter().map(|(_, t)| t.copy()).collect();
                (o, grads, state)
            })
        };
        let (fast, g_fast, s_fast) = run(true);
        let (oracle, g_oracle, s_oracle) = run(false);
        let what = format!("{} {family:?} {objective:?}", cfg.arch);
        let rel =
            |a: &Tensor, b: &Tensor| max_diff(a, b) / b.abs().max().double_value(&[]).max(1.0);
        assert!(rel(&fast.loss, &oracle.loss) <= 1e-5, "{what}: loss");
        assert!(
            rel(&fast.clean_logits, &oracle.clean_logits) <= 1e-5,
            "{what}: logits"
        );
        let dp = (fast.d_perturbed - oracle.d_perturbed).abs();
        assert!(
            dp <= 1e-5 * oracle.d_perturbed.max(1e-3),
            "{what}: d_perturbed {dp}"
        );
        assert_eq!(fast.d_clean.is_some(), oracle.d_clean.is_some());
        assert!(oracle.d_perturbed > 0.0, "{what}: members that differ");
        let names: Vec<String> = vars(m.as_ref()).into_iter().map(|(n, _)| n).collect();
        let mut nonzero = 0;
        for (i, n) in names.iter().enumerate() {
            let d = rel(&g_fast[i], &g_oracle[i]);
            assert!(d <= 1e-5, "{what}: gradient of {n} differs by {d}");
            let d = rel(&s_fast[i], &s_oracle[i]);
            assert!(d <= 1e-5, "{what}: {n} after the forward differs by {d}");
            nonzero += (g_oracle[i].abs().sum(Kind::Float).double_value(&[]) > 0.0) as usize;
        }
        assert!(nonzero > names.len() / 2, "{what}: gradients flowed");
    }
}

/// A training forward over distinct rows (`TrainSampling::rows`) equals the forward over the
/// expanded input wherever the expansion happens: at the end of a net with no Bayesian layer,
/// at the entry of a residual block whose only Bayesian layer is its shortcut conv, and at a
/// Wide-ResNet block (pre-activation batch norm first). Logits, features, input gradients and
/// the running statistics.
#[test]
fn training_forward_on_distinct_rows_equals_the_expanded_input() {
    let _serial = serial();
    let wrn = ModelConfig {
        arch: models::Arch::Wrn28x10,
        num_classes: 10,
        in_channels: 3,
        image_size: 16,
        ..ModelConfig::default()
    };
    let resnet = ModelConfig::resnet(18, 10, 32, true);
    let cases: [(ModelConfig, Option<&str>); 3] = [
        (resnet.clone(), None),
        (resnet, Some("layer4.0.downsample.0")),
        (wrn, Some("last-block")),
    ];
    for (cfg, layers) in cases {
        tch::manual_seed(5);
        let mut m = models::build(&cfg, Device::Cpu).unwrap();
        if let Some(l) = layers {
            m.convert(
                &l.parse::<LayerSelection>().unwrap(),
                &PosteriorConfig::new(Family::Ensemble, 3),
            )
            .unwrap();
            perturb(m.as_ref(), |n| n.ends_with("_members"), 0.05);
        }
        let size = cfg.image_size;
        let x = Tensor::rand([3, 3, size, size], (Kind::Float, Device::Cpu));
        let rows = vec![0i64, 1, 2, 0, 2, 2];
        let ids = vec![0i64, 1, 2, 1, 0, 2];
        let stats = |m: &dyn models::BayesModel| -> Vec<Tensor> {
            let mut v: Vec<(String, Tensor)> = m.var_store().variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.into_iter().map(|(_, t)| t.copy()).collect()
        };
        let state = stats(m.as_ref());
        let run = |input: &Tensor, rows: Option<Vec<i64>>| {
            tch::no_grad(|| {
                let mut v: Vec<(String, Tensor)> = m.var_store().variables().into_iter().collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                for ((_, mut t), s) in v.into_iter().zip(&state) {
                    t.copy_(s);
                }
            });
            let input = input.detach().set_requires_grad(true);
            let mode = ForwardMode::Train(TrainSampling {
                sampling: McSampling::PerExample,
                routing: Routing::Given(ids.clone()),
                rows,
            });
            let (y, f) = m.forward_mc_with_features(&input, &mode).unwrap();
            (y.square().sum(Kind::Float) + f.sum(Kind::Float)).backward();
            (y.detach(), f.detach(), input.grad(), stats(m.as_ref()))
        };
        let idx = Tensor::from_slice(&rows);
        let (y, f, g, s) = run(&x, Some(rows.clone()));
        let (y_ref, f_ref, g_ref, s_ref) = run(&x.index_select(0, &idx), None);
        let what = format!("{:?} {layers:?}", cfg.arch);
        assert_eq!(y.size(), [6, 1, 10], "{what}");
        let rel =
            |a: &Tensor, b: &Tensor| max_diff(a, b) / b.abs().max().double_value(&[]).max(1.0);
        assert!(
            rel(&y, &y_ref) <= 1e-5,
            "{what}: logits {}",
            rel(&y, &y_ref)
        );
        assert!(rel(&f, &f_ref) <= 1e-5, "{what}: features");
        // The input gradient of a distinct row sums those of its copies.
        let g_sum = Tensor::zeros_like(&g).index_add(0, &idx, &g_ref);
        assert!(rel(&g, &g_sum) <= 1e-5, "{what}: input gradients");
        for (a, b) in s.iter().zip(&s_ref) {
            assert!(rel(a, b) <= 1e-5, "{what}: running statistics");
        }
    }
}
