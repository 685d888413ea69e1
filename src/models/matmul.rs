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
