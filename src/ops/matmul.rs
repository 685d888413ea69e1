//! A checked, safe wrapper over the `gemm` crate (the same GEMM dfdx uses on the CPU),
//! for the hand-fused kernels that work on raw slices.

/// A read-only matrix view: `rows × cols`, element (r, c) at `r * row_stride + c * col_stride`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix view {rows}×{cols} over {} values", data.len());
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// `out (m×n, row-major) = [out +] a (m×k) · b (k×n)`, on `threads` threads (1 = this one).
pub fn matmul(out: &mut [f32], a: MatRef, b: MatRef, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner sizes differ");
    assert!(out.len() >= m * n, "matmul: output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above and in `MatRef::new` keep every index inside its slice;
    // `out` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_with_transposes() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 2×3
        let b: Vec<f32> = (0..12).map(|v| (v as f32) * 0.5).collect(); // 4×3, used transposed
        let mut out = vec![1.0; 8];
        matmul(&mut out, MatRef::new(&a, 2, 3), MatRef::new(&b, 4, 3).t(), true, 1);
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = 1.0 + (0..3).map(|p| a[i * 3 + p] * b[j * 3 + p]).sum::<f32>();
                assert!((out[i * 4 + j] - want).abs() < 1e-5);
            }
        }
    }
}

/// A right-hand matrix `B` (`k × n`) packed once for many products with it: panels of
/// [`PANEL`] columns, each stored row by row (`k × PANEL`, zero-padded past `n`). The LSTM
/// multiplies by the same recurrent weights at every time step; packing them once, instead
/// of inside every GEMM call, and a register-blocked AVX-512 kernel make that step faster.
pub struct PackedRhs {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

pub const PANEL: usize = 32;

impl PackedRhs {
    /// Packs `b` (any strides).
    pub fn new(b: MatRef) -> PackedRhs {
        let (k, n) = (b.rows, b.cols);
        let panels_n = n.div_ceil(PANEL);
        let mut panels = vec![0f32; panels_n * k * PANEL];
        for p in 0..panels_n {
            for kk in 0..k {
                for j in 0..PANEL.min(n - p * PANEL) {
                    let col = p * PANEL + j;
                    panels[(p * k + kk) * PANEL + j] = b.data[kk * b.row_stride + col * b.col_stride];
                }
            }
        }
        PackedRhs { k, n, panels }
    }

    /// `out (m×n, row-major) += a (m×k, row-major) · B`.
    pub fn matmul_acc(&self, out: &mut [f32], a: &[f32], m: usize) {
        assert!(a.len() >= m * self.k && out.len() >= m * self.n, "packed matmul: slices too small");
        #[cfg(target_arch = "x86_64")]
        if super::simd::cpu_features().avx512f {
            // SAFETY: the CPU has AVX-512F; the assert above bounds every access.
            unsafe { avx512::matmul_acc(self, out, a, m) };
            return;
        }
        self.matmul_acc_portable(out, a, m);
    }

    /// The same product without AVX-512, one panel at a time.
    fn matmul_acc_portable(&self, out: &mut [f32], a: &[f32], m: usize) {
        for p in 0..self.n.div_ceil(PANEL) {
            let width = PANEL.min(self.n - p * PANEL);
            let panel = &self.panels[p * self.k * PANEL..(p + 1) * self.k * PANEL];
            for r in 0..m {
                let row = &a[r * self.k..(r + 1) * self.k];
                let mut acc = [0f32; PANEL];
                for (kk, &x) in row.iter().enumerate() {
                    for (s, &w) in acc.iter_mut().zip(&panel[kk * PANEL..(kk + 1) * PANEL]) {
                        *s += x * w;
                    }
                }
                for j in 0..width {
                    out[r * self.n + p * PANEL + j] += acc[j];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedRhs, PANEL};
    use std::arch::x86_64::*;

    /// Rows per register block: 2 × ROWS accumulators of 16 lanes.
    const ROWS: usize = 8;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn matmul_acc(b: &PackedRhs, out: &mut [f32], a: &[f32], m: usize) {
        let mut r = 0;
        while r + ROWS <= m {
            block::<ROWS>(b, out, a, r);
            r += ROWS;
        }
        match m - r {
            0 => {}
            1 => block::<1>(b, out, a, r),
            2 => block::<2>(b, out, a, r),
            3 => block::<3>(b, out, a, r),
            4 => block::<4>(b, out, a, r),
            5 => block::<5>(b, out, a, r),
            6 => block::<6>(b, out, a, r),
            _ => block::<7>(b, out, a, r),
        }
    }

    /// Rows `r0 .. r0 + R` of the product, panel by panel.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize>(b: &PackedRhs, out: &mut [f32], a: &[f32], r0: usize) {
        let (k, n) = (b.k, b.n);
        for p in 0..n.div_ceil(PANEL) {
            let panel = b.panels.as_ptr().add(p * k * PANEL);
            let mut lo = [_mm512_setzero_ps(); R];
            let mut hi = [_mm512_setzero_ps(); R];
            for kk in 0..k {
                let w0 = _mm512_loadu_ps(panel.add(kk * PANEL));
                let w1 = _mm512_loadu_ps(panel.add(kk * PANEL + 16));
                for i in 0..R {
                    let x = _mm512_set1_ps(*a.get_unchecked((r0 + i) * k + kk));
                    lo[i] = _mm512_fmadd_ps(x, w0, lo[i]);
                    hi[i] = _mm512_fmadd_ps(x, w1, hi[i]);
                }
            }
            let col = p * PANEL;
            let width = PANEL.min(n - col);
            let mask_lo: __mmask16 = if width >= 16 { 0xFFFF } else { (1u32 << width) as u16 - 1 };
            let mask_hi: __mmask16 = if width >= 32 { 0xFFFF } else if width > 16 { (1u32 << (width - 16)) as u16 - 1 } else { 0 };
            for i in 0..R {
                let dst = out.as_mut_ptr().add((r0 + i) * n + col);
                let cur = _mm512_maskz_loadu_ps(mask_lo, dst);
                _mm512_mask_storeu_ps(dst, mask_lo, _mm512_add_ps(cur, lo[i]));
                if mask_hi != 0 {
                    let cur = _mm512_maskz_loadu_ps(mask_hi, dst.add(16));
                    _mm512_mask_storeu_ps(dst.add(16), mask_hi, _mm512_add_ps(cur, hi[i]));
                }
            }
        }
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    #[test]
    fn packed_matches_gemm_on_odd_sizes() {
        for &(m, k, n) in &[(1, 1, 1), (7, 5, 33), (8, 300, 1200), (17, 13, 47), (64, 30, 16), (9, 3, 64)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect(); // n × k
            let mut want: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.001).collect();
            let mut got = want.clone();
            let mut got_portable = want.clone();
            matmul(&mut want, MatRef::new(&a, m, k), MatRef::new(&w, n, k).t(), true, 1);
            let packed = PackedRhs::new(MatRef::new(&w, n, k).t());
            packed.matmul_acc(&mut got, &a, m);
            packed.matmul_acc_portable(&mut got_portable, &a, m);
            for ((x, y), z) in want.iter().zip(&got).zip(&got_portable) {
                assert!((x - y).abs() < 1e-3 * (1.0 + x.abs()), "{m}×{k}×{n}: {x} vs {y}");
                assert!((x - z).abs() < 1e-3 * (1.0 + x.abs()), "portable {m}×{k}×{n}: {x} vs {z}");
            }
        }
    }
}
