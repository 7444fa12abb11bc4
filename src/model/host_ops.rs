//! The image operations of the batch-1 gated pass on the CPU, run here on plain slices: at
//! one image the gated convolutions are a few million multiply-adds each, and libtorch's
//! per-call cost, tensor copies and thread hand-offs took most of the time (a `perf` profile:
//! 30% in the OpenMP spin-wait, 13% in sgemm). The matrix products go to `matrixmultiply`
//! (the GEMM ndarray uses), single-threaded.

/// A 3x3 convolution with stride 1 and padding 1 of one image `input` `[c][h][w]`: `weight`
/// `[out][c][3][3]` row-major, one `bias` per output filter. Returns `[out][h][w]`.
///
/// No im2col matrix: the input is copied once into a zero-bordered `[c][h+2][w+2]` buffer, in
/// which each of the nine taps reads the same `[c][h * (w+2)]` window shifted by its offset;
/// nine matrix products (one per tap) accumulate into an output two columns wider per row,
/// whose extra columns are dropped. (The GEMM packs its operands anyway, so an im2col matrix
/// would be a second copy of nine times the input.)
pub(super) fn conv3x3(input: &[f32], [c, h, w]: [usize; 3], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), c * h * w, "conv3x3: input is not {c}x{h}x{w}");
    let m = bias.len();
    assert_eq!(weight.len(), m * c * 9, "conv3x3: weight is not {m}x{c}x3x3");
    let (padded_w, padded_plane) = (w + 2, (h + 2) * (w + 2));
    let mut padded = vec![0.0f32; c * padded_plane];
    if h * w > 0 {
        for (plane, target) in input.chunks(h * w).zip(padded.chunks_mut(padded_plane)) {
            for (y, row) in plane.chunks(w).enumerate() {
                let start = (y + 1) * padded_w + 1;
                target[start..start + w].copy_from_slice(row);
            }
        }
    }
    // Output pixel (y, x) sits at column y * (w+2) + x; the last row's two extra columns would
    // read past the buffer, so they are not computed.
    let wide_plane = h * padded_w;
    let columns = wide_plane.saturating_sub(2);
    let mut wide = Vec::with_capacity(m * wide_plane);
    for &b in bias {
        wide.resize(wide.len() + wide_plane, b);
    }
    if m > 0 && c > 0 && columns > 0 {
        for tap in 0..9 {
            let shift = (tap / 3) * padded_w + tap % 3;
            // SAFETY: A is `m x c` at strides (c * 9, 9) from `tap` inside `weight` (m * c * 9
            // values); B is `c x columns` at strides (padded_plane, 1) from `shift`, whose last
            // element, (c-1) * padded_plane + shift + columns - 1 <= c * padded_plane - 1, is
            // inside `padded`; C is `m x columns` at strides (wide_plane, 1) inside `wide`
            // (m * wide_plane values), which aliases neither.
            unsafe {
                matrixmultiply::sgemm(
                    m, c, columns, 1.0,
                    weight.as_ptr().add(tap), (c * 9) as isize, 9,
                    padded.as_ptr().add(shift), padded_plane as isize, 1,
                    1.0, wide.as_mut_ptr(), wide_plane as isize, 1,
                );
            }
        }
    }
    let mut out = Vec::with_capacity(m * h * w);
    for plane in wide.chunks(wide_plane.max(1)).take(m) {
        for y in 0..h {
            out.extend_from_slice(&plane[y * padded_w..y * padded_w + w]);
        }
    }
    out
}

/// ReLU, then the gates (`[n][c]`, if any), then 2x2 max-pooling (if `pool`; odd sides
/// floored, as `max_pool2d(2)`) of a conv output `values` `[n][c][h][w]`: the result, its
/// shape and its per-channel means `[n][c]` (the next controlling module's GAP). Exact but
/// for the means, which accumulate in f64.
pub(super) fn relu_gate_pool(values: &[f32], shape: [usize; 4], gates: Option<&[f32]>, pool: bool) -> (Vec<f32>, [i64; 4], Vec<f32>) {
    let [n, c, h, w] = shape;
    let (out_h, out_w) = if pool { (h / 2, w / 2) } else { (h, w) };
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    let mut means = Vec::with_capacity(n * c);
    for (plane_index, plane) in values.chunks((h * w).max(1)).take(n * c).enumerate() {
        // A gate is 0 or 1 and ReLU's output is >= 0, so gating commutes with the pooling.
        let gate = gates.map_or(1.0, |g| g[plane_index]);
        let start = out.len();
        if pool {
            for y in 0..out_h {
                let (top, bottom) = (&plane[2 * y * w..], &plane[(2 * y + 1) * w..]);
                for x in 0..out_w {
                    let max = top[2 * x].max(top[2 * x + 1]).max(bottom[2 * x]).max(bottom[2 * x + 1]);
                    out.push(max.max(0.0) * gate);
                }
            }
        } else {
            out.extend(plane.iter().map(|&v| v.max(0.0) * gate));
        }
        let sum: f64 = out[start..].iter().map(|&v| v as f64).sum();
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
        for (c, h, w, out) in [(3, 9, 7, 5), (4, 8, 8, 6), (2, 1, 5, 3), (1, 1, 1, 2), (2, 6, 1, 3), (5, 28, 28, 8)] {
            let x = Tensor::randn([1, c, h, w], (Kind::Float, Device::Cpu));
            let weight = Tensor::randn([out, c, 3, 3], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([out], (Kind::Float, Device::Cpu));
            let expected = x.conv2d(&weight, Some(&bias), [1, 1], [1, 1], [1, 1], 1);
            let values = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
            let got = conv3x3(&values(&x), [c as usize, h as usize, w as usize], &values(&weight), &values(&bias));
            let got = Tensor::from_slice(&got).view(expected.size().as_slice());
            assert!(got.allclose(&expected, 1e-4, 1e-5, false), "values of {c}x{h}x{w}");
        }
        // No pixels (libtorch refuses them): nothing out, no panic.
        assert!(conv3x3(&[], [2, 0, 4], &[0.0; 3 * 2 * 9], &[1.0; 3]).is_empty());
    }
}
