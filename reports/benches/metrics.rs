//! Timings (not a test): `cargo bench -p libre-reports --bench metrics`.
//!
//! 1. AUROC + AUPR-in/out + TPR@FPR + TNR@TPR95 + detection accuracy on 10 million scores
//!    (one `DetectionMetrics::compute`: two parallel sorts and one sweep). Target: well under
//!    2 s on 2 cores, memory linear (peak RSS printed).
//! 2. Bootstrap: 1,000 stratified resamples of 100,000 scores with 1 thread and with all
//!    threads (the intervals must be identical, the wall time should scale with cores).
//!
//! `LIBRE_BENCH_N` overrides the 10 million (e.g. for a quick run).
use libre_reports::bootstrap::{bootstrap_detection, BootstrapConfig};
use libre_reports::detection::DetectionMetrics;
use libre_reports::rng::Xoshiro256pp;
use std::time::Instant;

fn data(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
    let mut r = Xoshiro256pp::seed_from_u64(seed);
    let labels: Vec<bool> = (0..n).map(|_| r.next_f64() < 0.5).collect();
    let scores = labels
        .iter()
        .map(|&y| r.next_f64() + r.next_f64() + if y { 0.5 } else { 0.0 })
        .collect();
    (scores, labels)
}

/// CPU seconds (user + system) of this process so far, from /proc (10 ms resolution): on a
/// shared, loaded machine it is a steadier measure than wall time.
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() > 12 {
        (f[10] + f[11]) / 100.0
    } else {
        f64::NAN
    }
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let n: usize = std::env::var("LIBRE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let threads = rayon::current_num_threads();
    println!("rayon threads available: {threads}");

    let (s, l) = data(n, 1);
    let rss_inputs = peak_rss_mib();
    let mut times = Vec::new();
    let mut m = None;
    let c0 = cpu_s();
    for _ in 0..3 {
        let t = Instant::now();
        m = Some(DetectionMetrics::compute(&s, &l).unwrap());
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_s() - c0) / 3.0;
    times.sort_by(f64::total_cmp);
    let m = m.unwrap();
    println!(
        "detection metrics, n = {n}: wall median {:.3} s (min {:.3}, max {:.3}), CPU {cpu:.3} s \
         per run; auroc {:.6}",
        times[1], times[0], times[2], m.auroc
    );
    if let (Some(a), Some(b)) = (rss_inputs, peak_rss_mib()) {
        println!(
            "peak RSS: {a:.0} MiB after generating inputs ({:.0} MiB of scores+labels), \
             {b:.0} MiB after the metrics",
            n as f64 * 9.0 / 1048576.0
        );
    }
    drop((s, l));

    let (s, l) = data(100_000, 2);
    let cfg = BootstrapConfig {
        n_resamples: 1000,
        seed: 7,
        level: 0.95,
    };
    let mut results = Vec::new();
    let mut counts = vec![1usize];
    if threads > 1 {
        counts.push(threads.min(2));
    }
    if threads > 2 {
        counts.push(threads);
    }
    for &k in &counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build()
            .unwrap();
        let (t, c0) = (Instant::now(), cpu_s());
        let ci = pool.install(|| bootstrap_detection(&s, &l, &cfg).unwrap());
        let dt = t.elapsed().as_secs_f64();
        println!(
            "bootstrap 1000 x 100k, {k} thread(s): wall {dt:.3} s, CPU {:.3} s; auroc CI \
             [{:.5}, {:.5}]",
            cpu_s() - c0,
            ci.auroc.lo,
            ci.auroc.hi
        );
        results.push((k, dt, ci));
    }
    let base = results[0].1;
    for (k, dt, ci) in &results[1..] {
        assert_eq!(
            ci, &results[0].2,
            "intervals differ between 1 and {k} threads"
        );
        println!(
            "speed-up with {k} threads: {:.2}x (identical intervals)",
            base / dt
        );
    }
}
