//! The batch-1 host convolution's inner loop on AVX-512, without packing: `matrixmultiply`
//! rounds the open filters up to its 16-row tiles, packs both operands for each of the nine
//! taps and reloads the output nine times (a `perf` profile: 13% of the gated pass in packing,
//! 6% in its partial-tile kernel). Here a block of up to 4 filters x 64 output columns stays in
//! 16 registers over every input channel and tap, reading the bordered input in place.

use std::arch::x86_64::{__m512, __mmask16, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps};

use super::host_ops::Taps;

/// Output columns per register.
const LANES: usize = 16;
/// Registers per filter in a block.
const VECTORS: usize = 4;

/// Adds the nine taps' products over `taps.c` channels to `wide` (`[m][wide_plane]`, holding
/// the biases): `input` is the bordered image (`c * padded_plane` values), `weight` `[m][c][9]`.
///
/// # Safety
/// The CPU must have AVX-512F; `input`, `weight` and `wide` must hold the values above.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate_taps(input: &[f32], weight: &[f32], wide: &mut [f32], taps: &Taps) {
    let m = wide.len() / taps.wide_plane;
    assert!(input.len() >= taps.c * taps.padded_plane && weight.len() >= m * taps.c * 9 && wide.len() == m * taps.wide_plane);
    let shifts: [usize; 9] = std::array::from_fn(|t| taps.shift(t));
    let mut filter = 0;
    while filter < m {
        // Blocks of 4 filters, then 2 and 1 for the rest: the block's registers are fixed.
        let rows = match m - filter {
            r if r >= 4 => 4,
            r if r >= 2 => 2,
            _ => 1,
        };
        for column in (0..taps.columns).step_by(LANES * VECTORS) {
            let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| lane_mask(taps.columns.saturating_sub(column + v * LANES)));
            // SAFETY: AVX-512F is enabled here; the block's reads and writes are in bounds
            // (see `block`).
            unsafe {
                match rows {
                    4 => block::<4>(input, weight, wide, taps, &shifts, filter, column, &masks),
                    2 => block::<2>(input, weight, wide, taps, &shifts, filter, column, &masks),
                    _ => block::<1>(input, weight, wide, taps, &shifts, filter, column, &masks),
                }
            }
        }
        filter += rows;
    }
}

/// The mask of the first `valid` of 16 lanes.
fn lane_mask(valid: usize) -> __mmask16 {
    if valid >= LANES { 0xFFFF } else { ((1u32 << valid) - 1) as __mmask16 }
}

/// Filters `filter..filter + R`, output columns `column..column + 64` (lanes past
/// `taps.columns` masked off: not read, not written).
///
/// # Safety
/// AVX-512F. Every lane read is at `k * padded_plane + shift + j` for a channel k < c, a shift
/// <= 2 * padded_w + 2 and an unmasked column j < columns = h * padded_w - 2, so below
/// `c * padded_plane`; weights at `(filter + r) * c * 9 + k * 9 + tap` < m * c * 9; writes at
/// `(filter + r) * wide_plane + j` < m * wide_plane.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const R: usize>(input: &[f32], weight: &[f32], wide: &mut [f32], taps: &Taps, shifts: &[usize; 9], filter: usize, column: usize, masks: &[__mmask16; VECTORS]) {
    let c = taps.c;
    let mut acc: [[__m512; VECTORS]; R] = [[_mm512_setzero_ps(); VECTORS]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        let out = wide.as_ptr().wrapping_add((filter + r) * taps.wide_plane + column);
        for (v, a) in row.iter_mut().enumerate() {
            *a = _mm512_maskz_loadu_ps(masks[v], out.wrapping_add(v * LANES));
        }
    }
    let weights = weight.as_ptr().add(filter * c * 9);
    for k in 0..c {
        let plane = input.as_ptr().wrapping_add(k * taps.padded_plane + column);
        for (tap, &shift) in shifts.iter().enumerate() {
            let x: [__m512; VECTORS] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], plane.wrapping_add(shift + v * LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*weights.add(r * c * 9 + k * 9 + tap));
                for (a, &x) in row.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(w, x, *a);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let out = wide.as_mut_ptr().wrapping_add((filter + r) * taps.wide_plane + column);
        for (v, &a) in row.iter().enumerate() {
            _mm512_mask_storeu_ps(out.wrapping_add(v * LANES), masks[v], a);
        }
    }
}
