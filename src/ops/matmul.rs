//! A checked, safe wrapper over the `gemm` crate (the same GEMM dfdx uses on the CPU),
//! for the hand-fused kernels that work on raw slices.

use super::packed::{Kernel, Precision};
use super::simd::cpu_features;

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
/// of inside every GEMM call, and register-blocked AVX-512 and AVX2 kernels make that step
/// faster.
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

    /// `out (m×n, row-major) += a (m×k, row-major) · B`, with the fastest kernel this CPU has.
    pub fn matmul_acc(&self, out: &mut [f32], a: &[f32], m: usize) {
        self.matmul_acc_with(Kernel::best(Precision::F32), out, a, m);
    }

    /// The same product with a chosen kernel (one of `Kernel::available(F32, cpu_features())`).
    pub fn matmul_acc_with(&self, kernel: Kernel, out: &mut [f32], a: &[f32], m: usize) {
        assert!(a.len() >= m * self.k && out.len() >= m * self.n, "packed matmul: slices too small");
        assert!(Kernel::available(Precision::F32, cpu_features()).contains(&kernel), "{kernel:?} is not available on this CPU");
        match kernel {
            // SAFETY: the CPU has the kernel's features (checked above); the first assert
            // bounds every access.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::matmul_acc(self, out, a, m) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::matmul_acc(self, out, a, m) },
            _ => self.matmul_acc_portable(out, a, m),
        }
    }

    /// The same product in plain Rust, one panel at a time.
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

/// AVX2 + FMA: half a panel (two 8-lane vectors, 16 columns) by 6 rows per register block
/// (12 accumulators, 2 weights and 1 broadcast input of the 16 registers). Panels are the
/// outer loop so each one stays in L1/L2 while every row block reads it; the whole weight
/// (300 × 1,200 for the student) is larger than L2 and would otherwise stream from L3 once
/// per row block.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PackedRhs, PANEL};
    use std::arch::x86_64::*;

    const ROWS: usize = 6;
    const HALF: usize = PANEL / 2;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matmul_acc(b: &PackedRhs, out: &mut [f32], a: &[f32], m: usize) {
        match m {
            1 => return few_rows::<1, 2>(b, out, a),
            2 => return few_rows::<2, 1>(b, out, a),
            _ => {}
        }
        for p in 0..b.n.div_ceil(PANEL) {
            for half in 0..(b.n - p * PANEL).min(PANEL).div_ceil(HALF) {
                let tile = Tile { panel: p, first: half * HALF };
                let mut r = 0;
                while r + ROWS <= m {
                    block::<ROWS>(b, tile, out, a, r);
                    r += ROWS;
                }
                match m - r {
                    0 => {}
                    1 => block::<1>(b, tile, out, a, r),
                    2 => block::<2>(b, tile, out, a, r),
                    3 => block::<3>(b, tile, out, a, r),
                    4 => block::<4>(b, tile, out, a, r),
                    _ => block::<5>(b, tile, out, a, r),
                }
            }
        }
    }

    /// One or two rows (batch-1 inference; a pair's two sides): whole panels per pass — two
    /// for one row, one for two — so each broadcast input serves four or eight weight vectors
    /// and eight sums run independently (a block over half panels loads a weight vector per
    /// one or two multiply-adds and waits on two or four running sums). Each column sums in
    /// the block's order, so the values are the block's bit for bit.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn few_rows<const R: usize, const P: usize>(b: &PackedRhs, out: &mut [f32], a: &[f32]) {
        let (k, n) = (b.k, b.n);
        let panels = n.div_ceil(PANEL);
        let mut p = 0;
        while p < panels {
            let count = (panels - p).min(P);
            let mut acc = [[[_mm256_setzero_ps(); 4]; P]; R];
            let mut weights = [b.panels.as_ptr().add(p * k * PANEL); P];
            for (c, w) in weights.iter_mut().enumerate().skip(1) {
                // Past the last panel: read the first again, its sums are not stored.
                *w = if c < count { w.add(c * k * PANEL) } else { *w };
            }
            for kk in 0..k {
                let mut x = [_mm256_setzero_ps(); R];
                for (i, x) in x.iter_mut().enumerate() {
                    *x = _mm256_set1_ps(*a.get_unchecked(i * k + kk));
                }
                for (c, w) in weights.iter().enumerate() {
                    let w = w.add(kk * PANEL);
                    for q in 0..4 {
                        let v = _mm256_loadu_ps(w.add(8 * q));
                        for (acc, x) in acc.iter_mut().zip(&x) {
                            acc[c][q] = _mm256_fmadd_ps(*x, v, acc[c][q]);
                        }
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (c, acc) in acc.iter().enumerate().take(count) {
                    let col = (p + c) * PANEL;
                    let width = PANEL.min(n - col);
                    let mut lanes = [0f32; PANEL];
                    for (q, sum) in acc.iter().enumerate() {
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * q), *sum);
                    }
                    out[i * n + col..i * n + col + width].iter_mut().zip(&lanes).for_each(|(o, l)| *o += l);
                }
            }
            p += count;
        }
    }

    /// Columns `first .. first + HALF` of panel `panel` (fewer at the right edge).
    #[derive(Clone, Copy)]
    struct Tile {
        panel: usize,
        first: usize,
    }

    /// Rows `r0 .. r0 + R` of one tile of the product.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize>(b: &PackedRhs, tile: Tile, out: &mut [f32], a: &[f32], r0: usize) {
        let (k, n) = (b.k, b.n);
        let weights = b.panels.as_ptr().add(tile.panel * k * PANEL + tile.first);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..k {
            let w = weights.add(kk * PANEL);
            let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*a.get_unchecked((r0 + i) * k + kk));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
        }
        let col = tile.panel * PANEL + tile.first;
        let width = HALF.min(n - col);
        for (i, acc) in acc.iter().enumerate() {
            let dst = out.as_mut_ptr().add((r0 + i) * n + col);
            if width == HALF {
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc[0]));
                _mm256_storeu_ps(dst.add(8), _mm256_add_ps(_mm256_loadu_ps(dst.add(8)), acc[1]));
            } else {
                let mut lanes = [0f32; HALF];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
                for (j, lane) in lanes.iter().take(width).enumerate() {
                    *dst.add(j) += lane;
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
        for &(m, k, n) in &[(1, 1, 1), (1, 300, 1200), (1, 7, 33), (1, 5, 64), (1, 3, 95), (2, 300, 1200), (2, 7, 33), (2, 3, 95), (7, 5, 33), (8, 300, 1200), (17, 13, 47), (64, 30, 16), (9, 3, 64), (5, 4, 31), (4, 2, 40)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect(); // n × k
            let start: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.001).collect();
            let mut want = start.clone();
            matmul(&mut want, MatRef::new(&a, m, k), MatRef::new(&w, n, k).t(), true, 1);
            let packed = PackedRhs::new(MatRef::new(&w, n, k).t());
            // Every kernel this CPU runs, the portable one always among them.
            for kernel in Kernel::available(Precision::F32, cpu_features()) {
                let mut got = start.clone();
                packed.matmul_acc_with(kernel, &mut got, &a, m);
                for (x, y) in want.iter().zip(&got) {
                    assert!((x - y).abs() < 1e-3 * (1.0 + x.abs()), "{kernel:?} {m}×{k}×{n}: {x} vs {y}");
                }
            }
        }
    }

    /// The one- and two-row paths sum each column as the row blocks do: a product's first
    /// rows alone equal, bit for bit, the same rows inside a larger product.
    #[test]
    fn few_row_paths_equal_the_row_blocks_bit_for_bit() {
        for &(k, n) in &[(300, 1200), (7, 33), (3, 95), (5, 64)] {
            let m = 8;
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 29 % 103) as f32 - 51.0) * 0.013).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 41 % 89) as f32 - 44.0) * 0.021).collect();
            let packed = PackedRhs::new(MatRef::new(&w, n, k).t());
            for kernel in Kernel::available(Precision::F32, cpu_features()) {
                let mut all = vec![0.5f32; m * n];
                packed.matmul_acc_with(kernel, &mut all, &a, m);
                for rows in [1, 2] {
                    let mut few = vec![0.5f32; rows * n];
                    packed.matmul_acc_with(kernel, &mut few, &a, rows);
                    assert!(few == all[..rows * n], "{kernel:?} {rows}×{k}×{n}");
                }
            }
        }
    }
}
