//! Detection cost as a ratio to the DNN forward of the same model and batch (issue "The LiBRe
//! detector", benchmark): `Detector::score` (one parallel MC forward giving the prediction and
//! every score) for a 20-member last-block LiBRe model against the plain DNN forward, interleaved
//! A B A B, min and median over rounds.
//!
//! `[BENCH_THREADS=n] cargo run --release --example bench_detect -- LIBRE_LENET5.safetensors
//!  [batch] [rounds]`
//!
//! - LeNet5 28 px: zoo:lenet5-mnist (DNN) vs the LiBRe checkpoint given (linear1, S = 20), on
//!   MNIST test digits.
//! - ResNet-18 32 px (CIFAR stem), last block (layer4.1) as a 20-member ensemble vs the DNN.
//!   Its weights are the random initialisation (timing only: the cost of a forward does not depend
//!   on the weights' values); the inputs are MNIST test digits padded to 32 px and replicated to
//!   3 channels.

use libre::bayes::{Family, LayerSelection, PosteriorConfig};
use libre::detect::{Detector, Score};
use libre::models::{self, ModelConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn ms(d: &Detector, x: &Tensor, scores: &[Score]) -> f64 {
    let t = Instant::now();
    let _ = d.score(x, scores).unwrap();
    t.elapsed().as_secs_f64() * 1e3
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn compare(name: &str, dnn: &Detector, bnn: &Detector, x: &Tensor, rounds: usize) {
    let (sd, sb) = (vec![Score::Msp], Score::available(bnn.samples()));
    let _ = (ms(dnn, x, &sd), ms(bnn, x, &sb)); // warm-up
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..rounds {
        a.push(ms(dnn, x, &sd));
        b.push(ms(bnn, x, &sb));
    }
    let ((amin, amed), (bmin, bmed)) = (stats(&mut a), stats(&mut b));
    let n = x.size()[0] as f64;
    println!(
        "{name}: DNN min {amin:.2} ms median {amed:.2} ms ({:.0} img/s) | LiBRe S={} all {} scores \
         min {bmin:.2} ms median {bmed:.2} ms ({:.0} img/s) | ratio min {:.2}x median {:.2}x",
        n / (amed / 1e3),
        bnn.samples(),
        sb.len(),
        n / (bmed / 1e3),
        bmin / amin,
        bmed / amed
    );
}

fn main() {
    // The allocator settings of the `libre` binary (LIBRE_MALLOC_TUNING=0 turns them off).
    eprintln!(
        "allocator: {:?}",
        libre::runtime::alloc::keep_freed_memory()
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let libre_ck = args
        .first()
        .expect("usage: bench_detect LIBRE_LENET5.safetensors [batch] [rounds]");
    let batch: i64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(128);
    let rounds: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(20);
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("BENCH_THREADS must be a number"));
    }
    let device = Device::Cpu;
    let ds = libre::data::open("mnist:test", Some(batch as usize), &mut |m| {
        eprintln!("{m}")
    })
    .unwrap();
    let (x, _) = ds.batch(0, batch as usize).unwrap();
    println!(
        "batch {batch}, {rounds} interleaved rounds, {} libtorch threads",
        tch::get_num_threads()
    );

    let zoo = libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut |m| eprintln!("{m}")).unwrap();
    let dnn = Detector::load(&zoo, device, None).unwrap();
    let bnn = Detector::load(std::path::Path::new(libre_ck), device, None).unwrap();
    compare("LeNet5 28 px", &dnn, &bnn, &x, rounds);

    let cfg = ModelConfig::resnet(18, 10, 32, true);
    tch::manual_seed(0);
    let d = models::build(&cfg, device).unwrap();
    let mut b = models::build(&cfg, device).unwrap();
    b.convert(
        &LayerSelection::LastBlock,
        &PosteriorConfig::new(Family::Ensemble, 20),
    )
    .unwrap();
    let x32 = x
        .constant_pad_nd([2, 2, 2, 2])
        .repeat([1, 3, 1, 1])
        .to_kind(Kind::Float);
    let (d, b) = (
        Detector::new(d, None).unwrap(),
        Detector::new(b, None).unwrap(),
    );
    compare(
        "ResNet-18 32 px (last block layer4.1)",
        &d,
        &b,
        &x32,
        rounds.min(10),
    );
}
