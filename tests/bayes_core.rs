//! The Bayesian core's must-show properties (issue 3): deterministic evaluation of converted
//! models equals the DNN, conversion back is exact, parallel MC equals sequential MC for the same
//! draws, per-example sampling and routing, Gaussian tricks match the exact output distribution,
//! and bad inputs fail with errors that name the problem.

use libre::bayes::{
    Family, ForwardMode, LayerSelection, McSampling, PosteriorConfig, Routing, TrainSampling,
};
use libre::models::{self, BayesModel, ModelConfig};
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global: every test holds this lock so that a seeded comparison is not
/// disturbed by draws of tests running in other threads.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    // One intra-op thread: these tests run small tensors, where libtorch's thread pool costs
    // more than it gains on a busy 2-core machine (measured 760 ms vs 45 ms per ResNet forward).
    tch::set_num_threads(1);
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn input(cfg: &ModelConfig, b: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand(
        [b, cfg.in_channels, cfg.image_size, cfg.image_size],
        (Kind::Float, Device::Cpu),
    )
}

fn sel(s: &str) -> LayerSelection {
    s.parse().unwrap()
}

/// Moves every posterior tensor away from its initial value, so members / components differ and
/// equalities cannot hold by accident.
fn perturb_posterior(m: &dyn BayesModel) {
    tch::no_grad(|| {
        for (n, t) in m.var_store().variables() {
            if n.ends_with("_members") || n.ends_with("_lr_a") || n.ends_with("_psi") {
                let shift = if n.ends_with("_psi") { 2.0 } else { 0.0 };
                let mut t = t;
                let _ = t.g_add_(&(t.randn_like() * 0.05 + shift));
            }
        }
    });
}

fn small_resnet() -> ModelConfig {
    ModelConfig::resnet(18, 10, 8, true)
}

fn configs() -> Vec<(ModelConfig, Vec<&'static str>)> {
    vec![
        (ModelConfig::lenet5(), vec!["all", "conv2", "last-block"]),
        (ModelConfig::digitcnn(), vec!["features.*"]),
        (
            ModelConfig::mlp(1, 28, vec![64, 32], 10),
            vec!["all", "fc2"],
        ),
        (small_resnet(), vec!["all", "layer2.0.downsample"]),
    ]
}

#[test]
fn converted_models_evaluate_deterministically_as_the_dnn() {
    let _rng = rng_lock();
    for (cfg, sels) in configs() {
        let x = input(&cfg, 3, 1);
        for s in sels {
            for fam in [Family::MeanField, Family::Ensemble, Family::LowRank] {
                tch::manual_seed(7);
                let mut m = models::build(&cfg, Device::Cpu).unwrap();
                let dnn = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
                assert_eq!(dnn.size(), vec![3, 1, 10]);
                m.convert(&sel(s), &PosteriorConfig::new(fam, 3)).unwrap();
                let det = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
                let d = max_diff(&dnn, &det);
                assert!(d <= 1e-5, "{} {s} {fam}: max abs diff {d}", cfg.arch);
                // Parallel MC is stochastic for mean-field / low-rank but still a valid shape.
                let mc = m
                    .forward_mc(&x, &ForwardMode::ParallelMc { samples: 3 })
                    .unwrap();
                assert_eq!(mc.size(), vec![3, 3, 10]);
            }
        }
    }
}

#[test]
fn convert_then_back_is_exact() {
    let _rng = rng_lock();
    for (cfg, sels) in configs() {
        let x = input(&cfg, 2, 2);
        for fam in [Family::MeanField, Family::Ensemble, Family::LowRank] {
            tch::manual_seed(3);
            let mut m = models::build(&cfg, Device::Cpu).unwrap();
            let before: Vec<(String, Tensor)> = {
                let mut v: Vec<_> = m.var_store().variables().into_iter().collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v.into_iter().map(|(n, t)| (n, t.copy())).collect()
            };
            let dnn = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
            m.convert(&sel(sels[0]), &PosteriorConfig::new(fam, 4))
                .unwrap();
            assert!(m.posterior().is_some());
            m.to_deterministic().unwrap();
            assert!(m.posterior().is_none());
            let mut after: Vec<_> = m.var_store().variables().into_iter().collect();
            after.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(before.len(), after.len(), "{} {fam}", cfg.arch);
            for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
                assert_eq!(n1, n2);
                assert!(t1.equal(t2), "{} {fam}: {n1} changed", cfg.arch);
            }
            let back = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
            assert!(dnn.equal(&back), "{} {fam}: logits differ", cfg.arch);
            assert_eq!(
                m.var_store().trainable_variables().len(),
                before
                    .iter()
                    .filter(|(n, _)| !n.contains("running") && !n.contains("num_batches"))
                    .count()
            );
        }
    }
}

#[test]
fn parallel_mc_equals_sequential_mc() {
    let _rng = rng_lock();
    let cases = [
        (ModelConfig::lenet5(), "all"),
        (ModelConfig::lenet5(), "conv2,linear2"),
        (ModelConfig::mlp(1, 28, vec![32], 10), "all"),
        // A Bayesian stem: the sample axis flows through every block, residual and BatchNorm.
        (small_resnet(), "conv1,layer1.0.bn1,fc"),
        (small_resnet(), "last-block"),
        (small_resnet(), "layer3.0"),
    ];
    for (cfg, s) in cases {
        let x = input(&cfg, 2, 4);
        for fam in [Family::MeanField, Family::Ensemble, Family::LowRank] {
            tch::manual_seed(11);
            let mut m = models::build(&cfg, Device::Cpu).unwrap();
            m.convert(&sel(s), &PosteriorConfig::new(fam, 4)).unwrap();
            perturb_posterior(m.as_ref());
            tch::manual_seed(99);
            let (par, fpar) = m
                .forward_mc_with_features(&x, &ForwardMode::ParallelMc { samples: 4 })
                .unwrap();
            tch::manual_seed(99);
            let (seq, fseq) = m
                .forward_mc_with_features(&x, &ForwardMode::SequentialMc { samples: 4 })
                .unwrap();
            let d = max_diff(&par, &seq);
            let scale = seq.abs().max().double_value(&[]).max(1.0);
            assert!(
                d <= 1e-4 * scale,
                "{} {s} {fam}: parallel vs sequential {d}",
                cfg.arch
            );
            assert!(
                max_diff(&fpar, &fseq) <= 1e-4 * scale.max(10.0),
                "{} {s} {fam} features",
                cfg.arch
            );
            // Samples really differ (a Bayesian layer is in the graph of every case).
            let spread = (par.select(1, 0) - par.select(1, 1))
                .abs()
                .max()
                .double_value(&[]);
            assert!(spread > 1e-6, "{} {s} {fam}: samples identical", cfg.arch);
        }
    }
}

#[test]
fn features_come_from_the_last_bayesian_block() {
    let _rng = rng_lock();
    let cfg = small_resnet();
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    let x = input(&cfg, 2, 5);
    let (_, f) = m
        .forward_mc_with_features(&x, &ForwardMode::ParallelMc { samples: 3 })
        .unwrap();
    // No Bayesian layer: the head input, broadcast over S.
    assert_eq!(f.size(), vec![2, 3, 512]);
    m.convert(
        &sel("last-block"),
        &PosteriorConfig::new(Family::Ensemble, 3),
    )
    .unwrap();
    perturb_posterior(m.as_ref());
    let (l, f) = m
        .forward_mc_with_features(&x, &ForwardMode::ParallelMc { samples: 3 })
        .unwrap();
    assert_eq!(l.size(), vec![2, 3, 10]);
    assert_eq!(f.size(), vec![2, 3, 512, 1, 1]);
    let var = f
        .var_dim(1, true, false)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(var > 0.0);
    let mut le = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    le.convert(&sel("linear1"), &PosteriorConfig::new(Family::MeanField, 2))
        .unwrap();
    let xl = input(le.config(), 2, 6);
    let (_, f) = le
        .forward_mc_with_features(&xl, &ForwardMode::ParallelMc { samples: 5 })
        .unwrap();
    assert_eq!(f.size(), vec![2, 5, 200]);
}

#[test]
fn per_example_sampling_gives_each_example_its_own_weights() {
    let _rng = rng_lock();
    let cfg = ModelConfig::lenet5();
    let x1 = input(&cfg, 1, 8);
    let x = x1.repeat([4, 1, 1, 1]); // four copies of one image
    let train = |s: McSampling| {
        ForwardMode::Train(TrainSampling {
            sampling: s,
            routing: Routing::Random,
            rows: None,
        })
    };
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    m.convert(&sel("all"), &PosteriorConfig::new(Family::MeanField, 2))
        .unwrap();
    perturb_posterior(m.as_ref());
    for s in [
        McSampling::PerExample,
        McSampling::LocalReparam,
        McSampling::Flipout,
    ] {
        let y = m.forward_mc(&x, &train(s)).unwrap();
        assert_eq!(y.size(), vec![4, 1, 10]);
        let d = max_diff(&y.get(0), &y.get(1));
        assert!(d > 1e-4, "{s:?}: copies got the same weights ({d})");
    }
    let y = m.forward_mc(&x, &train(McSampling::PerBatch)).unwrap();
    assert!(
        max_diff(&y.get(0), &y.get(3)) < 1e-5,
        "per-batch: one sample for all"
    );

    // Ensemble routing: example i through member ids[i] equals member ids[i] of parallel MC.
    let mut e = models::build(&cfg, Device::Cpu).unwrap();
    e.convert(
        &sel("conv2,linear1"),
        &PosteriorConfig::new(Family::Ensemble, 3),
    )
    .unwrap();
    perturb_posterior(e.as_ref());
    let x = input(&cfg, 4, 9);
    let ids = vec![2i64, 0, 1, 2];
    let mode = ForwardMode::Train(TrainSampling {
        sampling: McSampling::PerExample,
        routing: Routing::Given(ids.clone()),
        rows: None,
    });
    let routed = e.forward_mc(&x, &mode).unwrap();
    let all = e
        .forward_mc(&x, &ForwardMode::ParallelMc { samples: 3 })
        .unwrap();
    for (i, &k) in ids.iter().enumerate() {
        let d = max_diff(&routed.get(i as i64).get(0), &all.get(i as i64).get(k));
        assert!(d < 1e-4, "example {i} member {k}: {d}");
    }
    let fixed = ForwardMode::Train(TrainSampling {
        sampling: McSampling::PerExample,
        routing: Routing::Fixed(1),
        rows: None,
    });
    let y = e.forward_mc(&x, &fixed).unwrap();
    assert!(max_diff(&y.squeeze_dim(1), &all.select(1, 1)) < 1e-4);
    let e_bad = e.forward_mc(
        &x,
        &ForwardMode::Train(TrainSampling {
            sampling: McSampling::PerExample,
            routing: Routing::Given(vec![0, 1]),
            rows: None,
        }),
    );
    assert!(e_bad
        .unwrap_err()
        .to_string()
        .contains("2 given for a batch of 4"));
}

/// For one mean-field linear layer the output of an input x is Gaussian with mean `x mu^T + b`
/// and variance `x^2 sigma^2 + sigma_b^2`: every training scheme must reproduce it.
#[test]
fn training_schemes_match_the_exact_output_distribution() {
    let _rng = rng_lock();
    let cfg = ModelConfig::mlp(1, 4, vec![], 3); // one layer fc1: 16 -> 3
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    m.convert(&sel("all"), &PosteriorConfig::new(Family::MeanField, 1))
        .unwrap();
    tch::no_grad(|| {
        for (n, mut t) in m.var_store().variables() {
            if n.ends_with("_psi") {
                let _ = t.fill_(-1.0);
            }
        }
    });
    let vars = m.var_store().variables();
    let x1 = input(&cfg, 1, 10);
    let xf = x1.reshape([1, 16]);
    let mean = xf
        .linear(&vars["fc1.weight"], Some(&vars["fc1.bias"]))
        .squeeze();
    let s2 = (-2.0f64).exp(); // sigma^2 = exp(2 psi), psi = -1
    let var = ((&xf * &xf).sum(Kind::Float) * s2 + s2).double_value(&[]);
    // 400 forwards of 50 copies: flipout shares one perturbation per forward, so its marginal
    // distribution is exact only over forwards.
    let x = x1.repeat([50, 1, 1, 1]);
    for s in [
        McSampling::PerExample,
        McSampling::LocalReparam,
        McSampling::Flipout,
    ] {
        tch::manual_seed(12);
        let mode = ForwardMode::Train(TrainSampling {
            sampling: s,
            routing: Routing::Random,
            rows: None,
        });
        let ys: Vec<Tensor> = (0..400)
            .map(|_| {
                tch::no_grad(|| m.forward_mc(&x, &mode))
                    .unwrap()
                    .squeeze_dim(1)
            })
            .collect();
        let y = Tensor::cat(&ys, 0);
        let emp_mean = y.mean_dim(0, false, Kind::Float);
        let emp_var = y.var_dim(0, true, false);
        let tol_mean = 4.0 * (var / 20000.0).sqrt();
        assert!(max_diff(&emp_mean, &mean) < tol_mean, "{s:?}: mean");
        for k in 0..3 {
            let v = emp_var.double_value(&[k]);
            assert!((v / var - 1.0).abs() < 0.06, "{s:?}: variance {v} vs {var}");
        }
    }
}

#[test]
fn lenet5_matches_advertorch_layout() {
    let _rng = rng_lock();
    let m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    let mut names: Vec<(String, Vec<i64>)> = m
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    names.sort();
    let want: Vec<(String, Vec<i64>)> = vec![
        ("conv1.bias".into(), vec![32]),
        ("conv1.weight".into(), vec![32, 1, 3, 3]),
        ("conv2.bias".into(), vec![64]),
        ("conv2.weight".into(), vec![64, 32, 3, 3]),
        ("linear1.bias".into(), vec![200]),
        ("linear1.weight".into(), vec![200, 3136]),
        ("linear2.bias".into(), vec![10]),
        ("linear2.weight".into(), vec![10, 200]),
    ];
    assert_eq!(names, want);
    // The forward is exactly conv-relu-pool x2, flatten (C,H,W), linear-relu, linear.
    let x = input(m.config(), 2, 13);
    let v = m.var_store().variables();
    let a = x
        .conv2d(
            &v["conv1.weight"],
            Some(&v["conv1.bias"]),
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
        .relu()
        .max_pool2d_default(2);
    let a = a
        .conv2d(
            &v["conv2.weight"],
            Some(&v["conv2.bias"]),
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
        .relu()
        .max_pool2d_default(2);
    let a = a
        .view([2, 3136])
        .linear(&v["linear1.weight"], Some(&v["linear1.bias"]))
        .relu();
    let want = a.linear(&v["linear2.weight"], Some(&v["linear2.bias"]));
    let got = m
        .forward_mc(&x, &ForwardMode::Deterministic)
        .unwrap()
        .squeeze_dim(1);
    assert!(max_diff(&want, &got) < 1e-6);
}

#[test]
fn resnet_names_follow_torchvision() {
    let _rng = rng_lock();
    let m18 = models::build(&ModelConfig::resnet(18, 1000, 224, false), Device::Cpu).unwrap();
    let v = m18.var_store().variables();
    assert_eq!(
        v.len(),
        122,
        "torchvision resnet18 state_dict has 122 entries"
    );
    for n in [
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ] {
        assert!(v.contains_key(n), "{n}");
    }
    assert_eq!(v["layer1.0.bn1.num_batches_tracked"].kind(), Kind::Int64);
    let m50 = models::build(&ModelConfig::resnet(50, 1000, 224, false), Device::Cpu).unwrap();
    let v = m50.var_store().variables();
    assert_eq!(
        v.len(),
        320,
        "torchvision resnet50 state_dict has 320 entries"
    );
    assert_eq!(v["layer4.2.conv2.weight"].size(), vec![512, 512, 3, 3]);
    assert_eq!(v["fc.weight"].size(), vec![1000, 2048]);
    assert_eq!(m50.last_block(), vec!["layer4.2".to_string()],);
}

#[test]
fn bad_inputs_name_the_problem() {
    let _rng = rng_lock();
    let mut m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    let x = input(m.config(), 2, 14);
    let e = m
        .forward_mc(&x, &ForwardMode::ParallelMc { samples: 0 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("S must be >= 1"), "{e}");
    let e = m
        .convert(&sel("all"), &PosteriorConfig::new(Family::MeanField, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be >= 1"), "{e}");
    let e = m
        .convert(&sel("conv3"), &PosteriorConfig::new(Family::MeanField, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown layer path 'conv3'") && e.contains("linear1"),
        "{e}"
    );
    assert!(
        m.posterior().is_none(),
        "a failed conversion changes nothing"
    );
    let bad = Tensor::rand([2, 3, 28, 28], (Kind::Float, Device::Cpu));
    let e = m
        .forward_mc(&bad, &ForwardMode::Deterministic)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected input [B, 1, 28, 28]") && e.contains("[2, 3, 28, 28]"),
        "{e}"
    );
    m.convert(&sel("linear2"), &PosteriorConfig::new(Family::Ensemble, 2))
        .unwrap();
    let e = m
        .forward_mc(&x, &ForwardMode::ParallelMc { samples: 5 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("only 2 members"), "{e}");
    let e = m
        .convert(&sel("linear2"), &PosteriorConfig::new(Family::Ensemble, 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already converted: linear2"), "{e}");
    let e = m
        .convert(&sel("conv1"), &PosteriorConfig::new(Family::MeanField, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already carries a posterior (ensemble, 1 layer(s))"),
        "{e}"
    );
}

#[test]
fn wide_resnet_builds_converts_and_runs() {
    let _rng = rng_lock();
    let cfg = ModelConfig {
        arch: libre::models::Arch::Wrn28x10,
        num_classes: 10,
        in_channels: 3,
        image_size: 8,
        ..ModelConfig::lenet5()
    };
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    let v = m.var_store().variables();
    assert_eq!(
        v["block1.layer.0.convShortcut.weight"].size(),
        vec![160, 16, 1, 1]
    );
    assert_eq!(
        v["block3.layer.3.conv2.weight"].size(),
        vec![640, 640, 3, 3]
    );
    assert_eq!(v["fc.weight"].size(), vec![10, 640]);
    let x = input(&cfg, 2, 15);
    let dnn = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
    let conv = m
        .convert(
            &sel("last-block"),
            &PosteriorConfig::new(Family::Ensemble, 2),
        )
        .unwrap();
    assert_eq!(conv.len(), 4, "{conv:?}");
    let det = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
    assert!(max_diff(&dnn, &det) <= 1e-5);
    let mc = m
        .forward_mc(&x, &ForwardMode::ParallelMc { samples: 2 })
        .unwrap();
    // Identical members right after conversion: both samples are the DNN.
    assert!(max_diff(&mc.select(1, 1), &dnn.squeeze_dim(1)) <= 1e-4);
}
