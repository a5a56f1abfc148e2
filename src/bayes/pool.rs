//! Max pooling for the layers' activations: a faster inference kernel behind the fast-path
//! switch ([`super::fast`]), equal to libtorch's op value for value.

use tch::Tensor;

/// `k x k` max pooling of `[N, C, H, W]` (dilation 1, floor mode, padding with -inf), equal to
/// libtorch's `max_pool2d` value for value (NaN propagates in both).
///
/// Why not just `max_pool2d`: libtorch's CPU kernel computes the argmax indices too and walks
/// the NCHW input one window at a time; on the 2-core machines it took 19 ms of LeNet5's ~50 ms
/// per batch of 256 in `libre eval` and 75 ms of a ResNet-50 224 px forward. Where no gradient
/// is needed (inference on the CPU, fast paths on) the pooling runs as separable maxima over
/// strided views, rows first, then columns: 5-10x faster. With a gradient the plain op stays,
/// because its backward sends a tied window's gradient to one element, while `maximum` splits
/// it (ties are common: constant background gives equal pre-activations), and attacks must
/// match PyTorch's gradients. [`super::fast::set_fast_paths`]`(false)` is the oracle.
pub fn max_pool2d(x: &Tensor, k: i64, stride: i64, pad: i64) -> Tensor {
    let fast = super::fast::fast_paths()
        && x.device() == tch::Device::Cpu
        && x.dim() == 4
        && !x.requires_grad()
        && x.is_floating_point()
        && k > 1
        && stride >= 1
        && pad <= k / 2
        && x.size()[2..].iter().all(|&n| n + 2 * pad >= k);
    // Anything unusual (a window larger than the map, too much padding) goes to libtorch, which
    // also gives the error messages.
    if !fast {
        return x.max_pool2d([k, k], [stride, stride], [pad, pad], [1, 1], false);
    }
    let padded;
    let x = if pad > 0 {
        padded = x.pad([pad, pad, pad, pad], "constant", f64::NEG_INFINITY);
        &padded
    } else {
        x
    };
    // Separable: the maximum over k strided row views, then over k strided column views.
    let pool_dim = |t: &Tensor, dim: i64| -> Tensor {
        let n = t.size()[dim as usize];
        let out = (n - k) / stride + 1;
        let view = |i: i64| t.slice(dim, i, i + stride * (out - 1) + 1, stride);
        (1..k).fold(view(0), |m, i| m.maximum(&view(i)))
    };
    pool_dim(&pool_dim(x, 2), 3)
}
