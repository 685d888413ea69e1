//! Linear layers packed once for inference in FP32, BF16 or INT8, with GEMM kernels chosen at
//! run time by CPU feature and a portable path for every precision.
//!
//! A weight `[out, in]` is packed into panels of [`NR`] = 64 output columns; inside a panel
//! the input dimension runs in groups of 1 (FP32), 2 (BF16) or 4 (INT8) values per output,
//! the order in which one FMA, `vdpbf16ps` or `vpdpbusd` consumes them, so a kernel reads each
//! panel front to back. Packing happens once per model, not once per call.
//!
//! - INT8: weights are quantised symmetrically per output channel (scale = max|w|/127),
//!   activations per row at run time (scale = max|x|/127) and shifted by +128 to u8, since VNNI
//!   multiplies u8 by i8; the shift is taken back with the weight column sums. Accumulation is
//!   exact i32, so every INT8 kernel, the portable one included, gives identical results.
//! - BF16: weights and activations rounded to bfloat16 (nearest even), products summed in f32.
//! - FP32: the same panels with FMA.

use rayon::prelude::*;

use crate::models::layers::gelu_in_place;
use super::simd::{cpu_features, dispatch, CpuFeatures};

/// The number format of teacher inference.
#[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full precision (what training uses).
    #[default]
    F32,
    /// bfloat16 weights and activations in the GEMMs, f32 sums (AVX512-BF16).
    Bf16,
    /// int8 weights (per output channel) and activations (per row), i32 sums (VNNI).
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// Input values per output consumed together by one instruction (the packing depth).
    fn group(self) -> usize {
        match self {
            Precision::F32 => 1,
            Precision::Bf16 => 2,
            Precision::Int8 => 4,
        }
    }
}

/// Output columns per panel: four 16-lane AVX-512 registers.
pub const NR: usize = 64;
/// Rows per register block (6 × 4 accumulators + 4 weights + 1 input of 32 registers).
const MR: usize = 6;
/// Rows per parallel task: a multiple of `MR`; the task's inputs stay in L2.
const ROWS_PER_TASK: usize = 48;

/// Which implementation of a GEMM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// 256-bit: AVX2 + FMA (FP32), AVX-VNNI (INT8).
    Avx2,
    /// INT8 on AVX2 without VNNI: u8 and i8 widened to i16 and multiplied pairwise into i32
    /// (`vpmaddwd`, exact). No more multiply-adds per instruction than FP32's FMA, but the
    /// weights stream as bytes, a quarter of FP32's memory traffic, which is what bounds small
    /// batches (teacher inference: 1.2× FP32 on a Zen 3; the student at batch 1: 2.4×).
    Avx2Madd,
    /// 512-bit: AVX-512F (FP32), AVX512-VNNI (INT8), AVX512-BF16 (BF16).
    Avx512,
}

impl Kernel {
    /// Every kernel `features` can run for `precision`, fastest first (the portable one last).
    pub fn available(precision: Precision, features: CpuFeatures) -> Vec<Kernel> {
        let (wide, narrow) = match precision {
            Precision::F32 => (features.avx512f, features.avx2_fma),
            Precision::Int8 => (features.avx512_vnni, features.avx_vnni),
            Precision::Bf16 => (features.avx512_bf16, false),
        };
        let mut kernels = Vec::new();
        if wide {
            kernels.push(Kernel::Avx512);
        }
        if narrow {
            kernels.push(Kernel::Avx2);
        }
        if precision == Precision::Int8 && features.avx2_fma {
            kernels.push(Kernel::Avx2Madd);
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    /// The fastest kernel this CPU runs for `precision`.
    pub fn best(precision: Precision) -> Kernel {
        Kernel::available(precision, cpu_features())[0]
    }
}

/// A one-line note when `precision` has no instruction support here and takes the portable
/// path (`None` when it is supported, and always for FP32).
pub fn missing_instruction_note(precision: Precision) -> Option<String> {
    if precision == Precision::F32 || Kernel::best(precision) != Kernel::Portable {
        return None;
    }
    let wanted = match precision {
        Precision::Int8 => "AVX512-VNNI, AVX-VNNI or AVX2",
        _ => "AVX512-BF16",
    };
    Some(format!(
        "note: this CPU has no {wanted} (or DISTILL_SIMD=portable is set): {} inference runs on the portable path, \
         which is slower than f32; use f32 here",
        precision.name()
    ))
}

/// What is applied to each output after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact (erf) GELU, fused into the GEMM's row blocks while they are in cache.
    Gelu,
}

enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Int8 { values: Vec<i8>, scales: Vec<f32>, col_sums: Vec<i32> },
}

/// `y = x · weightᵀ + bias` with the weight packed once in one precision.
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    /// `inputs` rounded up to the packing depth.
    depth: usize,
    bias: Vec<f32>,
    panels: Panels,
}

impl PackedLinear {
    /// Packs a PyTorch-layout weight `[outputs, inputs]` (row-major) and its bias.
    pub fn new(weight: &[f32], bias: &[f32], outputs: usize, inputs: usize, precision: Precision) -> PackedLinear {
        assert_eq!(weight.len(), outputs * inputs, "PackedLinear: weight is not {outputs}×{inputs}");
        assert_eq!(bias.len(), outputs, "PackedLinear: bias is not {outputs} long");
        let group = precision.group();
        let depth = inputs.div_ceil(group) * group;
        let panels = match precision {
            Precision::F32 => Panels::F32(pack(outputs, inputs, depth, group, |o, i| weight[o * inputs + i])),
            Precision::Bf16 => Panels::Bf16(pack(outputs, inputs, depth, group, |o, i| f32_to_bf16(weight[o * inputs + i]))),
            Precision::Int8 => {
                let scales: Vec<f32> = weight.chunks_exact(inputs).map(|row| max_abs(row) / 127.0).collect();
                let quantised: Vec<i8> = weight
                    .chunks_exact(inputs)
                    .zip(&scales)
                    .flat_map(|(row, &s)| row.iter().map(move |&w| quantise(w, s)))
                    .collect();
                let col_sums = quantised.chunks_exact(inputs).map(|row| row.iter().map(|&q| q as i32).sum()).collect();
                let values = pack(outputs, inputs, depth, group, |o, i| quantised[o * inputs + i]);
                Panels::Int8 { values, scales, col_sums }
            }
        };
        PackedLinear { inputs, outputs, depth, bias: bias.to_vec(), panels }
    }

    pub fn precision(&self) -> Precision {
        match self.panels {
            Panels::F32(_) => Precision::F32,
            Panels::Bf16(_) => Precision::Bf16,
            Panels::Int8 { .. } => Precision::Int8,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `rows × inputs` → `rows × outputs`, rows in parallel, with this CPU's fastest kernel.
    pub fn forward(&self, x: &[f32], rows: usize, activation: Activation) -> Vec<f32> {
        self.forward_with(Kernel::best(self.precision()), x, rows, activation)
    }

    /// [`PackedLinear::forward`] with a given kernel (it must be one this CPU runs).
    pub fn forward_with(&self, kernel: Kernel, x: &[f32], rows: usize, activation: Activation) -> Vec<f32> {
        assert!(
            Kernel::available(self.precision(), cpu_features()).contains(&kernel),
            "{kernel:?} does not run {} on this CPU",
            self.precision().name()
        );
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k, "PackedLinear: {} inputs for {rows} rows of {k}", x.len());
        let mut out = vec![0f32; rows * n];
        if rows == 0 {
            return out;
        }
        // The code around the kernels (quantising, bias, dequantising) vectorises too when
        // compiled for the CPU's widest registers.
        out.par_chunks_mut(ROWS_PER_TASK * n)
            .zip(x[..rows * k].par_chunks(ROWS_PER_TASK * k))
            .for_each(|(out, x)| block(self, kernel, x, out, activation));
        out
    }

    /// One task's rows: the inputs in the kernel's format, then every panel.
    #[inline(always)]
    fn block(&self, kernel: Kernel, x: &[f32], out: &mut [f32]) {
        let (k, depth) = (self.inputs, self.depth);
        let rows = x.len() / k;
        let plus_bias = |_row: usize, col: usize, acc: &[f32; NR], dst: &mut [f32]| {
            dst.iter_mut().zip(acc).zip(&self.bias[col..]).for_each(|((d, a), b)| *d = a + b);
        };
        match &self.panels {
            Panels::F32(panels) => self.each_tile(
                out,
                rows,
                |p, r0, r, acc| f32_tile(kernel, &x[r0 * k..], k, &panels[p * depth * NR..(p + 1) * depth * NR], depth, r, acc),
                plus_bias,
            ),
            Panels::Bf16(panels) => {
                let mut a = vec![0u16; rows * depth];
                for (dst, src) in a.chunks_exact_mut(depth).zip(x.chunks_exact(k)) {
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = f32_to_bf16(v));
                }
                self.each_tile(
                    out,
                    rows,
                    |p, r0, r, acc| bf16_tile(kernel, &a[r0 * depth..], depth, &panels[p * depth * NR..(p + 1) * depth * NR], r, acc),
                    plus_bias,
                )
            }
            Panels::Int8 { values, scales, col_sums } => {
                // u8 = round(x / scale) + 128 per row; padding columns hold 128 (zero).
                let mut a = vec![128u8; rows * depth];
                let mut row_scales = vec![0f32; rows];
                for ((dst, src), s) in a.chunks_exact_mut(depth).zip(x.chunks_exact(k)).zip(row_scales.iter_mut()) {
                    let amax = max_abs(src);
                    *s = amax / 127.0;
                    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = to_u8(round_even(v * inv) + 128.0));
                }
                self.each_tile(
                    out,
                    rows,
                    |p, r0, r, acc| int8_tile(kernel, &a[r0 * depth..], depth, &values[p * depth * NR..(p + 1) * depth * NR], r, acc),
                    |row, col, acc: &[i32; NR], dst| {
                        let s = row_scales[row];
                        let columns = col_sums[col..].iter().zip(&scales[col..]).zip(&self.bias[col..]);
                        for ((d, &a), ((&sum, &scale), &bias)) in dst.iter_mut().zip(acc).zip(columns) {
                            *d = (a - 128 * sum) as f32 * (s * scale) + bias;
                        }
                    },
                )
            }
        }
    }

    /// Runs `tile(panel, first row, rows, accumulators)` over every (panel, row block) of a
    /// task, and `write(row, first column, accumulators, outputs)` for each row of a block.
    #[inline(always)]
    fn each_tile<A: Copy + Default>(
        &self,
        out: &mut [f32],
        rows: usize,
        mut tile: impl FnMut(usize, usize, usize, &mut [[A; NR]; MR]),
        write: impl Fn(usize, usize, &[A; NR], &mut [f32]),
    ) {
        let n = self.outputs;
        let mut acc = [[A::default(); NR]; MR];
        for p in 0..n.div_ceil(NR) {
            let col = p * NR;
            let width = NR.min(n - col);
            for r0 in (0..rows).step_by(MR) {
                let r = MR.min(rows - r0);
                tile(p, r0, r, &mut acc);
                for (i, acc) in acc.iter().enumerate().take(r) {
                    write(r0 + i, col, acc, &mut out[(r0 + i) * n + col..(r0 + i) * n + col + width]);
                }
            }
        }
    }
}

/// Panels `[panel][depth / group][NR][group]` of `value(output, input)`, zero-padded.
fn pack<T: Copy + Default>(outputs: usize, inputs: usize, depth: usize, group: usize, value: impl Fn(usize, usize) -> T) -> Vec<T> {
    let panels = outputs.div_ceil(NR);
    let mut packed = vec![T::default(); panels * depth * NR];
    for p in 0..panels {
        for g in 0..depth / group {
            for j in 0..NR.min(outputs - p * NR) {
                for b in 0..group {
                    let i = g * group + b;
                    if i < inputs {
                        packed[((p * (depth / group) + g) * NR + j) * group + b] = value(p * NR + j, i);
                    }
                }
            }
        }
    }
    packed
}

#[inline(always)]
fn block_generic(linear: &PackedLinear, kernel: Kernel, x: &[f32], out: &mut [f32], activation: Activation) {
    linear.block(kernel, x, out);
    if activation == Activation::Gelu {
        gelu_in_place(out);
    }
}

dispatch!(fn block = block_generic(linear: &PackedLinear, kernel: Kernel, x: &[f32], out: &mut [f32], activation: Activation));

/// The largest |value| (the INT8 scale's numerator); NaN when any value is NaN or infinite,
/// so a non-finite weight or activation makes its outputs NaN instead of a finite guess.
#[inline(always)]
fn max_abs(values: &[f32]) -> f32 {
    // Sixteen running maxima, so the loop vectorises; `v · 0` is 0 unless `v` is not finite.
    let (mut lanes, mut poison) = ([0f32; 16], [0f32; 16]);
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for ((m, p), v) in lanes.iter_mut().zip(poison.iter_mut()).zip(chunk) {
            *m = if v.abs() > *m { v.abs() } else { *m };
            *p += v * 0.0;
        }
    }
    let rest = chunks.remainder();
    if poison.iter().chain(rest).any(|v| v * 0.0 != 0.0) {
        return f32::NAN;
    }
    rest.iter().chain(&lanes).fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m })
}

/// A whole number in 0..=255 as u8, through its float bits: `n + 1.5·2²³` holds `n` in its
/// low mantissa byte (`as u8` on a float is a scalar, saturating conversion that does not
/// vectorise).
#[inline(always)]
fn to_u8(whole: f32) -> u8 {
    (whole + 12_582_912.0).to_bits() as u8
}

/// Rounds to the nearest integer, ties to even, for |v| ≤ 2²² (branch-free, vectorises).
#[inline(always)]
fn round_even(v: f32) -> f32 {
    (v + 12_582_912.0) - 12_582_912.0
}

/// `round(value / scale)` in [-127, 127]; 0 when the scale is 0 (an all-zero row).
fn quantise(value: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (value / scale).round().clamp(-127.0, 127.0) as i8
}

/// Rounds to bfloat16, nearest even (NaN stays NaN).
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// Calls `$f::<R>($args)` for a row count `R` in 1..=MR known only at run time.
macro_rules! with_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $f::<6>($($arg),*),
        }
    };
}

/// `acc[i][j] = Σ_k a[i·lda + k] · panel[k][j]` for `rows` rows.
fn f32_tile(kernel: Kernel, a: &[f32], lda: usize, panel: &[f32], depth: usize, rows: usize, acc: &mut [[f32; NR]; MR]) {
    assert!(a.len() >= (rows - 1) * lda + depth && panel.len() >= depth * NR, "f32 tile out of bounds");
    match kernel {
        // SAFETY: `forward_with` checked that the CPU has the kernel's features; the assert
        // above bounds every read.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { with_rows!(rows, f32_avx512(a.as_ptr(), lda, panel.as_ptr(), depth, acc)) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { with_rows!(rows, f32_avx2(a.as_ptr(), lda, panel.as_ptr(), depth, acc)) },
        _ => {
            for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                acc.fill(0.0);
                for (kk, w) in panel.chunks_exact(NR).take(depth).enumerate() {
                    let x = a[i * lda + kk];
                    acc.iter_mut().zip(w).for_each(|(s, w)| *s += x * w);
                }
            }
        }
    }
}

/// BF16 pairs: `acc[i][j] = Σ_g (acc + a₁·w₁) + a₀·w₀`, the order `vdpbf16ps` sums in.
fn bf16_tile(kernel: Kernel, a: &[u16], lda: usize, panel: &[u16], rows: usize, acc: &mut [[f32; NR]; MR]) {
    let pairs = lda / 2;
    assert!(a.len() >= rows * lda && panel.len() >= pairs * NR * 2, "bf16 tile out of bounds");
    match kernel {
        // SAFETY: as in `f32_tile`.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { with_rows!(rows, bf16_avx512(a.as_ptr(), lda, panel.as_ptr(), pairs, acc)) },
        _ => {
            for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                acc.fill(0.0);
                for (g, w) in panel.chunks_exact(NR * 2).take(pairs).enumerate() {
                    let (x0, x1) = (bf16_to_f32(a[i * lda + 2 * g]), bf16_to_f32(a[i * lda + 2 * g + 1]));
                    for (s, w) in acc.iter_mut().zip(w.chunks_exact(2)) {
                        *s = (*s + x1 * bf16_to_f32(w[1])) + x0 * bf16_to_f32(w[0]);
                    }
                }
            }
        }
    }
}

/// INT8 groups of four: `acc[i][j] = Σ a (u8) · w (i8)` in exact i32.
fn int8_tile(kernel: Kernel, a: &[u8], lda: usize, panel: &[i8], rows: usize, acc: &mut [[i32; NR]; MR]) {
    let groups = lda / 4;
    assert!(a.len() >= rows * lda && panel.len() >= groups * NR * 4, "int8 tile out of bounds");
    match kernel {
        // SAFETY: as in `f32_tile`.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { with_rows!(rows, int8_avx512(a.as_ptr(), lda, panel.as_ptr(), groups, acc)) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { with_rows!(rows, int8_avxvnni(a.as_ptr(), lda, panel.as_ptr(), groups, acc)) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Madd => unsafe { with_rows!(rows, int8_avx2_madd(a.as_ptr(), lda, panel.as_ptr(), groups, acc)) },
        _ => {
            for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                acc.fill(0);
                for (g, w) in panel.chunks_exact(NR * 4).take(groups).enumerate() {
                    let x = &a[i * lda + 4 * g..i * lda + 4 * g + 4];
                    for (s, w) in acc.iter_mut().zip(w.chunks_exact(4)) {
                        *s += (0..4).map(|b| x[b] as i32 * w[b] as i32).sum::<i32>();
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `ws[c]` and `acc[c]` side by side
unsafe fn f32_avx512<const R: usize>(a: *const f32, lda: usize, panel: *const f32, depth: usize, out: &mut [[f32; NR]; MR]) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for kk in 0..depth {
        let w = panel.add(kk * NR);
        let ws = [_mm512_loadu_ps(w), _mm512_loadu_ps(w.add(16)), _mm512_loadu_ps(w.add(32)), _mm512_loadu_ps(w.add(48))];
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(i * lda + kk));
            for c in 0..4 {
                acc[c] = _mm512_fmadd_ps(x, ws[c], acc[c]);
            }
        }
    }
    for (dst, acc) in out.iter_mut().zip(&acc) {
        for c in 0..4 {
            _mm512_storeu_ps(dst.as_mut_ptr().add(16 * c), acc[c]);
        }
    }
}

/// 256-bit registers: the panel in quarters of 16 columns, so accumulators fit 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_avx2<const R: usize>(a: *const f32, lda: usize, panel: *const f32, depth: usize, out: &mut [[f32; NR]; MR]) {
    for q in 0..4 {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..depth {
            let w = panel.add(kk * NR + 16 * q);
            let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*a.add(i * lda + kk));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
        }
        for (dst, acc) in out.iter_mut().zip(&acc) {
            _mm256_storeu_ps(dst.as_mut_ptr().add(16 * q), acc[0]);
            _mm256_storeu_ps(dst.as_mut_ptr().add(16 * q + 8), acc[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `ws[c]` and `acc[c]` side by side
unsafe fn bf16_avx512<const R: usize>(a: *const u16, lda: usize, panel: *const u16, pairs: usize, out: &mut [[f32; NR]; MR]) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for g in 0..pairs {
        let w = panel.add(g * NR * 2) as *const __m512i;
        let ws: [__m512bh; 4] = [
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(1))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(2))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(3))),
        ];
        for (i, acc) in acc.iter_mut().enumerate() {
            let pair = (a.add(i * lda + 2 * g) as *const i32).read_unaligned();
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            for c in 0..4 {
                acc[c] = _mm512_dpbf16_ps(acc[c], x, ws[c]);
            }
        }
    }
    for (dst, acc) in out.iter_mut().zip(&acc) {
        for c in 0..4 {
            _mm512_storeu_ps(dst.as_mut_ptr().add(16 * c), acc[c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // `ws[c]` and `acc[c]` side by side
unsafe fn int8_avx512<const R: usize>(a: *const u8, lda: usize, panel: *const i8, groups: usize, out: &mut [[i32; NR]; MR]) {
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    for g in 0..groups {
        let w = panel.add(g * NR * 4) as *const __m512i;
        let ws = [_mm512_loadu_si512(w), _mm512_loadu_si512(w.add(1)), _mm512_loadu_si512(w.add(2)), _mm512_loadu_si512(w.add(3))];
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(i * lda + 4 * g) as *const i32).read_unaligned());
            for c in 0..4 {
                acc[c] = _mm512_dpbusd_epi32(acc[c], x, ws[c]);
            }
        }
    }
    for (dst, acc) in out.iter_mut().zip(&acc) {
        for c in 0..4 {
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c) as *mut __m512i, acc[c]);
        }
    }
}

/// AVX-VNNI on 256-bit registers, the panel in quarters as in `f32_avx2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn int8_avxvnni<const R: usize>(a: *const u8, lda: usize, panel: *const i8, groups: usize, out: &mut [[i32; NR]; MR]) {
    for q in 0..4 {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            let w = panel.add(g * NR * 4 + 64 * q) as *const __m256i;
            let (w0, w1) = (_mm256_loadu_si256(w), _mm256_loadu_si256(w.add(1)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((a.add(i * lda + 4 * g) as *const i32).read_unaligned());
                acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, w0);
                acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, w1);
            }
        }
        for (dst, acc) in out.iter_mut().zip(&acc) {
            _mm256_storeu_si256(dst.as_mut_ptr().add(16 * q) as *mut __m256i, acc[0]);
            _mm256_storeu_si256(dst.as_mut_ptr().add(16 * q + 8) as *mut __m256i, acc[1]);
        }
    }
}

/// INT8 without VNNI, 16 columns at a time: a group's 4 bytes of each column widened to i16
/// (one register holds 4 columns × 4), the row's 4 inputs broadcast as i16, `vpmaddwd` adds
/// products in pairs into i32 lanes; the two lanes of each column are added at the end. All
/// sums exact, so the result equals the other INT8 kernels'. Rows go two at a time: 8
/// accumulators, 4 widened weights and 1 input fit the 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn int8_avx2_madd<const R: usize>(a: *const u8, lda: usize, panel: *const i8, groups: usize, out: &mut [[i32; NR]; MR]) {
    for q in 0..4 {
        let mut r = 0;
        while r < R {
            let pair = (R - r).min(2);
            let mut acc = [[_mm256_setzero_si256(); 4]; 2];
            for g in 0..groups {
                let w = panel.add(g * NR * 4 + 64 * q) as *const __m128i;
                let ws = [
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(1))),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(2))),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(3))),
                ];
                for (i, acc) in acc.iter_mut().enumerate().take(pair) {
                    let bytes = (a.add((r + i) * lda + 4 * g) as *const i32).read_unaligned();
                    let x = _mm256_set1_epi64x(_mm_cvtsi128_si64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(bytes))));
                    for (acc, w) in acc.iter_mut().zip(&ws) {
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(x, *w));
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(pair) {
                // hadd within 128-bit halves gives columns [0 1 4 5 | 2 3 6 7]; the qword
                // permute puts them in order.
                let lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[0], acc[1]), 0b11_01_10_00);
                let hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2], acc[3]), 0b11_01_10_00);
                let dst = out[r + i].as_mut_ptr().add(16 * q) as *mut __m256i;
                _mm256_storeu_si256(dst, lo);
                _mm256_storeu_si256(dst.add(1), hi);
            }
            r += pair;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * scale).collect()
    }

    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for o in 0..n {
                out[r * n + o] = b[o] + (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    /// Every precision and every kernel this CPU has, on ragged shapes (rows not a multiple of
    /// the row block, columns not of the panel, depth not of the packing group), against an
    /// f64 reference; all INT8 kernels agree exactly, BF16 ones within rounding.
    #[test]
    fn every_kernel_matches_the_reference_on_ragged_shapes() {
        for &(rows, k, n) in &[(1, 1, 1), (7, 5, 65), (13, 384, 100), (50, 33, 129), (6, 1536, 64), (97, 64, 7)] {
            let x = values(rows * k, 1, 2.0);
            let w = values(n * k, 2, 0.1);
            let b = values(n, 3, 0.5);
            let want = reference(&x, &w, &b, rows, k, n);
            let scale = max_abs(&want).max(1e-3);
            for (precision, tolerance) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2), (Precision::Int8, 3e-2)] {
                let linear = PackedLinear::new(&w, &b, n, k, precision);
                let mut first: Option<Vec<f32>> = None;
                for kernel in Kernel::available(precision, cpu_features()) {
                    let got = linear.forward_with(kernel, &x, rows, Activation::None);
                    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max) / scale;
                    assert!(worst < tolerance, "{precision:?} {kernel:?} {rows}×{k}×{n}: relative error {worst}");
                    match &first {
                        None => first = Some(got),
                        Some(f) => {
                            let diff = f.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
                            let same = if precision == Precision::Int8 { 0.0 } else { 1e-5 };
                            assert!(diff <= same, "{precision:?} {kernel:?} differs from the first kernel by {diff}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn int8_kernels_stay_exact_at_the_extremes() {
        // Every input and weight at ±full scale (±127, inputs as u8 1 or 255): the largest
        // products the INT8 kernels see; a kernel that sums pairs in i16 (`vpmaddubsw`) would
        // saturate here.
        let (rows, k, n) = (7, 96, 70);
        let x: Vec<f32> = (0..rows * k).map(|i| if (i * 7) % 5 == 0 { -1.0 } else { 1.0 }).collect();
        let w: Vec<f32> = (0..n * k).map(|i| if (i * 3) % 7 == 0 { -1.0 } else { 1.0 }).collect();
        let want = reference(&x, &w, &vec![0.0; n], rows, k, n);
        let linear = PackedLinear::new(&w, &vec![0.0; n], n, k, Precision::Int8);
        for kernel in Kernel::available(Precision::Int8, cpu_features()) {
            let got = linear.forward_with(kernel, &x, rows, Activation::None);
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{kernel:?}: off by {worst} at full scale");
        }
    }

    #[test]
    fn gelu_is_fused_after_the_bias() {
        let (rows, k, n) = (9, 10, 70);
        let (x, w, b) = (values(rows * k, 4, 1.0), values(n * k, 5, 0.3), values(n, 6, 0.2));
        let linear = PackedLinear::new(&w, &b, n, k, Precision::F32);
        let mut plain = linear.forward(&x, rows, Activation::None);
        gelu_in_place(&mut plain);
        assert_eq!(linear.forward(&x, rows, Activation::Gelu), plain);
    }

    /// A NaN or infinity in a weight row or an input row gives NaN outputs in every precision
    /// (INT8's scales would otherwise quantise it to a finite value and hide it).
    #[test]
    fn non_finite_values_stay_visible_in_every_precision() {
        let (rows, k, n) = (3, 40, 5);
        let mut x = values(rows * k, 7, 1.0);
        let mut w = values(n * k, 8, 0.2);
        x[k + 17] = f32::NAN; // input row 1
        w[3 * k + 33] = f32::INFINITY; // output channel 3
        let b = values(n, 9, 0.1);
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            let out = PackedLinear::new(&w, &b, n, k, precision).forward(&x, rows, Activation::None);
            for r in 0..rows {
                for o in 0..n {
                    let poisoned = r == 1 || o == 3;
                    assert_eq!(!out[r * n + o].is_finite(), poisoned, "{precision:?} row {r} output {o}: {}", out[r * n + o]);
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0)), 1.0);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie → even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }
}
