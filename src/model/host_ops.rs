//! The image operations of the batch-1 gated pass on the CPU, run here on plain slices: at
//! one image the gated convolutions are a few million multiply-adds each, and libtorch's
//! per-call cost, tensor copies and thread hand-offs took most of the time (a `perf` profile:
//! 30% in the OpenMP spin-wait, 13% in sgemm). The convolution runs on AVX-512 where the CPU
//! has it (`conv_avx512.rs`), else as matrix products on `matrixmultiply` (the GEMM ndarray
//! uses); single-threaded either way (a batch's images are spread over threads instead).

/// One image `[c][h][w]` copied into a zero-bordered `[c][h+2][w+2]` buffer: the input
/// layout of [`conv3x3`] (its padding, already in place).
pub(super) fn bordered(plain: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    assert_eq!(plain.len(), c * h * w, "bordered: input is not {c}x{h}x{w}");
    let (padded_w, padded_plane) = (w + 2, (h + 2) * (w + 2));
    let mut padded = vec![0.0f32; c * padded_plane];
    if h * w > 0 {
        for (plane, target) in plain.chunks(h * w).zip(padded.chunks_mut(padded_plane)) {
            for (y, row) in plane.chunks(w).enumerate() {
                let start = (y + 1) * padded_w + 1;
                target[start..start + w].copy_from_slice(row);
            }
        }
    }
    padded
}

/// A 3x3 convolution with stride 1 and padding 1 of one image `[c][h][w]` given zero-bordered
/// (`input` `[c][h+2][w+2]`, see [`bordered`]): `weight` `[out][c][3][3]` row-major, one `bias`
/// per output filter. Returns the output *wide*: `[out][h][w+2]`, whose last two columns of
/// each row are not pixels ([`relu_gate_pool`] reads it with row stride `w+2`).
///
/// No im2col matrix: each of the nine taps reads the same `[c][h * (w+2)]` window of the
/// bordered input shifted by its offset, accumulated into the wide output in registers on
/// AVX-512 (`conv_avx512.rs`), else as nine matrix products, one per tap (the GEMM packs its
/// operands anyway, so an im2col matrix would be a second copy of nine times the input). The
/// layouts chain: the next layer's bordered input is written by the ReLU/pool step, so no copy
/// is made between layers.
pub(super) fn conv3x3(input: &[f32], shape: [usize; 3], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    conv3x3_using(input, shape, weight, bias, true)
}

/// [`conv3x3`], on AVX-512 where `simd` and the CPU has it, else on the portable GEMM.
fn conv3x3_using(input: &[f32], [c, h, w]: [usize; 3], weight: &[f32], bias: &[f32], simd: bool) -> Vec<f32> {
    let (padded_w, padded_plane) = (w + 2, (h + 2) * (w + 2));
    assert_eq!(input.len(), c * padded_plane, "conv3x3: input is not {c}x{h}x{w} bordered");
    let m = bias.len();
    assert_eq!(weight.len(), m * c * 9, "conv3x3: weight is not {m}x{c}x3x3");
    // Output pixel (y, x) sits at column y * (w+2) + x; the last row's two extra columns would
    // read past the buffer, so they are not computed.
    let wide_plane = h * padded_w;
    let taps = Taps { c, padded_w, padded_plane, wide_plane, columns: wide_plane.saturating_sub(2) };
    let mut wide = Vec::with_capacity(m * wide_plane);
    for &b in bias {
        wide.resize(wide.len() + wide_plane, b);
    }
    if m > 0 && c > 0 && taps.columns > 0 && h * w > 0 {
        #[cfg(target_arch = "x86_64")]
        if simd && simd_convolution() {
            // SAFETY: the CPU has AVX-512F; the slices have the sizes `taps` describes
            // (asserted above).
            unsafe { super::conv_avx512::accumulate_taps(input, weight, &mut wide, &taps) };
            return wide;
        }
        accumulate_taps_gemm(input, weight, &mut wide, &taps);
    }
    wide
}

/// Whether [`conv3x3`] runs on AVX-512 here (else on the portable GEMM, about 1.5x slower).
pub(super) fn simd_convolution() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The geometry of one [`conv3x3`]: `c` input channels, bordered rows `padded_w` wide and planes
/// `padded_plane` long; output planes `wide_plane` long, of which the first `columns` are
/// computed (the last row's two extra columns would read past the input).
pub(super) struct Taps {
    pub c: usize,
    pub padded_w: usize,
    pub padded_plane: usize,
    pub wide_plane: usize,
    pub columns: usize,
}

impl Taps {
    /// Where tap `t` (row-major in the 3x3 kernel) reads, relative to the output column.
    pub fn shift(&self, tap: usize) -> usize {
        (tap / 3) * self.padded_w + tap % 3
    }
}

/// Adds the nine taps' products to `wide` (`[m][wide_plane]`, holding the biases) with one
/// `matrixmultiply` GEMM per tap: the portable path.
fn accumulate_taps_gemm(input: &[f32], weight: &[f32], wide: &mut [f32], taps: &Taps) {
    let &Taps { c, padded_plane, wide_plane, columns, .. } = taps;
    let m = wide.len() / wide_plane;
    for tap in 0..9 {
        // SAFETY: A is `m x c` at strides (c * 9, 9) from `tap` inside `weight` (m * c * 9
        // values); B is `c x columns` at strides (padded_plane, 1) from the shift, whose last
        // element, (c-1) * padded_plane + shift + columns - 1 <= c * padded_plane - 1, is
        // inside `input`; C is `m x columns` at strides (wide_plane, 1) inside `wide`
        // (m * wide_plane values), which aliases neither.
        unsafe {
            matrixmultiply::sgemm(
                m, c, columns, 1.0,
                weight.as_ptr().add(tap), (c * 9) as isize, 9,
                input.as_ptr().add(taps.shift(tap)), padded_plane as isize, 1,
                1.0, wide.as_mut_ptr(), wide_plane as isize, 1,
            );
        }
    }
}

/// ReLU, then the gates (`[n][c]`, if any), then 2x2 max-pooling (if `pool`; odd sides
/// floored, as `max_pool2d(2)`) of a conv output `values` `[n][c][h][row_stride]` whose first
/// `w` columns of each row are pixels (`row_stride` = `w` for a plain tensor, `w+2` for
/// [`conv3x3`]'s wide output). Returns the result with `border` zero pixels around each plane
/// (1: the next [`conv3x3`]'s input), its shape without the border and its per-channel means
/// `[n][c]` (the next controlling module's GAP). Exact but for the means, which accumulate in
/// f64.
pub(super) fn relu_gate_pool(values: &[f32], [n, c, h, w]: [usize; 4], row_stride: usize, gates: Option<&[f32]>, pool: bool, border: usize) -> (Vec<f32>, [i64; 4], Vec<f32>) {
    assert!(row_stride >= w && values.len() == n * c * h * row_stride, "relu_gate_pool: values are not {n}x{c}x{h}x{row_stride}");
    let (out_h, out_w) = if pool { (h / 2, w / 2) } else { (h, w) };
    let (target_w, target_plane) = (out_w + 2 * border, (out_h + 2 * border) * (out_w + 2 * border));
    let in_plane = h * row_stride;
    let mut out = vec![0.0f32; n * c * target_plane];
    let mut means = Vec::with_capacity(n * c);
    for index in 0..n * c {
        let plane = &values[index * in_plane..(index + 1) * in_plane];
        let target = &mut out[index * target_plane..(index + 1) * target_plane];
        // A gate is 0 or 1 and ReLU's output is >= 0, so gating commutes with the pooling.
        let gate = gates.map_or(1.0, |g| g[index]);
        let mut sum = 0.0f64;
        for y in 0..out_h {
            let start = (y + border) * target_w + border;
            let row = &mut target[start..start + out_w];
            if pool {
                let (top, bottom) = (&plane[2 * y * row_stride..], &plane[(2 * y + 1) * row_stride..]);
                for (x, v) in row.iter_mut().enumerate() {
                    *v = top[2 * x].max(top[2 * x + 1]).max(bottom[2 * x]).max(bottom[2 * x + 1]).max(0.0) * gate;
                }
            } else {
                for (v, &s) in row.iter_mut().zip(&plane[y * row_stride..y * row_stride + w]) {
                    *v = s.max(0.0) * gate;
                }
            }
            sum += row.iter().map(|&v| v as f64).sum::<f64>();
        }
        means.push((sum / (out_h * out_w).max(1) as f64) as f32);
    }
    (out, [n as i64, c as i64, out_h as i64, out_w as i64], means)
}

/// `rows [n][k] · weightᵀ + bias` for `weight [m][k]`, accumulated in f64 (so it rounds no
/// worse than libtorch's f32 matmul): a few hundred numbers, cheaper here than a libtorch call.
pub(super) fn linear(rows: &[f32], n: usize, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let k = rows.len() / n.max(1);
    let m = weight.len() / k.max(1);
    let mut out = Vec::with_capacity(n * m);
    for row in rows.chunks(k.max(1)).take(n) {
        for j in 0..m {
            let sum: f64 = weight[j * k..(j + 1) * k].iter().zip(row).map(|(&w, &x)| w as f64 * x as f64).sum();
            out.push((sum + bias.map_or(0.0, |b| b[j] as f64)) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// Against libtorch's conv2d, for odd and even sides, 1-pixel images and rows.
    #[test]
    fn conv3x3_equals_libtorch() {
        tch::manual_seed(11);
        for (c, h, w, out) in [(3, 9, 7, 5), (4, 8, 8, 6), (2, 1, 5, 3), (1, 1, 1, 2), (2, 6, 1, 3), (5, 28, 28, 8), (20, 14, 14, 7), (9, 7, 7, 11)] {
            let x = Tensor::randn([1, c, h, w], (Kind::Float, Device::Cpu));
            let weight = Tensor::randn([out, c, 3, 3], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([out], (Kind::Float, Device::Cpu));
            let expected = x.conv2d(&weight, Some(&bias), [1, 1], [1, 1], [1, 1], 1);
            let values = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
            let shape = [c as usize, h as usize, w as usize];
            // On AVX-512 where the CPU has it, and on the portable GEMM.
            for simd in [true, false] {
                let wide = conv3x3_using(&bordered(&values(&x), shape), shape, &values(&weight), &values(&bias), simd);
                // The wide rows' two extra columns dropped.
                let got = Tensor::from_slice(&wide).view([out, h, w + 2]).narrow(2, 0, w).unsqueeze(0);
                assert!(got.allclose(&expected, 1e-4, 1e-4, false), "values of {c}x{h}x{w} (simd {simd})");
            }
        }
        // No pixels (libtorch refuses them): nothing out, no panic.
        assert!(conv3x3(&[0.0; 2 * 2 * 6], [2, 0, 4], &[0.0; 3 * 2 * 9], &[1.0; 3]).is_empty());
    }

    /// Against libtorch's relu, gates and max_pool2d, reading a wide buffer (rows two values
    /// longer than the image) and writing a zero border, for odd and even sides.
    #[test]
    fn relu_gate_pool_equals_libtorch() {
        tch::manual_seed(12);
        for (c, h, w, pool) in [(3, 7, 5, true), (2, 6, 6, true), (4, 5, 3, false), (1, 2, 3, true)] {
            let wide = Tensor::randn([1, c, h, w + 2], (Kind::Float, Device::Cpu));
            let gates: Vec<f32> = (0..c).map(|i| (i % 2) as f32).collect();
            let values = Vec::<f32>::try_from(wide.contiguous().view([-1])).unwrap();
            let shape = [1, c as usize, h as usize, w as usize];
            let (got, out_shape, means) = relu_gate_pool(&values, shape, w as usize + 2, Some(&gates), pool, 1);
            let mut expected = wide.narrow(3, 0, w).relu() * Tensor::from_slice(&gates).view([1, c, 1, 1]);
            if pool {
                expected = expected.max_pool2d_default(2);
            }
            assert_eq!(out_shape.as_slice(), expected.size().as_slice());
            let [oh, ow] = [out_shape[2], out_shape[3]];
            let got = Tensor::from_slice(&got).view([1, c, oh + 2, ow + 2]);
            assert!(got.narrow(2, 1, oh).narrow(3, 1, ow).allclose(&expected, 1e-6, 1e-7, false), "values of {c}x{h}x{w}");
            let border_sum = got.abs().sum(Kind::Double).double_value(&[]) - expected.abs().sum(Kind::Double).double_value(&[]);
            assert!(border_sum.abs() < 1e-3, "the border is zero: {border_sum}");
            let expected_means = Vec::<f32>::try_from(expected.mean_dim([2i64, 3].as_slice(), false, Kind::Float).view([-1])).unwrap();
            for (g, e) in means.iter().zip(&expected_means) {
                assert!((g - e).abs() < 1e-5, "means {means:?} against {expected_means:?}");
            }
        }
    }
}
