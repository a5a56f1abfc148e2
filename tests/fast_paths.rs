//! The sample axis's fast paths against the grouped-conv oracle (issue 14): ResNet-18 at 32 px
//! runs its last stage on 1x1 maps, where an S-weight conv is a matmul over the centre tap. In its
//! own test binary because the switch is process-wide.

use libre::bayes::conv::set_fast_paths;
use libre::bayes::{Family, ForwardMode, LayerSelection, PosteriorConfig};
use libre::models::{self, ModelConfig};
use tch::{Device, Kind, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn centre_tap_matmul_equals_the_grouped_conv() {
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
        tch::no_grad(|| {
            for (n, mut t) in m.var_store().variables() {
                if n.ends_with("_members") || n.ends_with("_psi") || n.contains("_lr_") {
                    let _ = t.g_add_(&(t.randn_like() * 0.05));
                }
            }
        });
        let mode = ForwardMode::ParallelMc { samples: 5 };
        let run = |fast: bool| {
            set_fast_paths(fast);
            tch::manual_seed(3); // the same weight draws for a sampling posterior
            let out = tch::no_grad(|| m.forward_mc_with_features(&x, &mode)).unwrap();
            set_fast_paths(true);
            out
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
        tch::no_grad(|| {
            for (n, mut t) in m.var_store().variables() {
                if n.ends_with("_members") {
                    let _ = t.g_add_(&(t.randn_like() * 0.05));
                }
            }
        });
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
