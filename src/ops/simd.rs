//! Vectorisable math and run-time CPU dispatch for the hand-written kernels.

/// `exp` as a branch-free polynomial (relative error < 2e-7), so loops over it vectorise.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    // Round x·log2(e) to the nearest integer n without a libm call: adding 1.5·2^23 leaves
    // n in the low mantissa bits of `shifted`, which also gives 2^n by integer arithmetic.
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_888_9)))));
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    p * two_to_n
}


/// `dispatch!(pub fn name = generic(args…))` defines `name`, which runs `generic` compiled for
/// AVX-512, for AVX2+FMA or for the baseline, whichever the CPU has ([`cpu_features`], so
/// `DISTILL_SIMD=portable` picks the baseline). `generic` is `#[inline(always)]`, so each
/// variant is the same code vectorised for its registers.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident = $generic:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                let features = $crate::ops::simd::cpu_features();
                // SAFETY: each variant runs only where the CPU reports its features.
                if features.avx512f {
                    return unsafe { avx512($($arg),*) };
                }
                if features.avx2_fma {
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

pub(crate) use dispatch;

/// The instruction-set extensions the hand-written kernels can use, read once per process.
/// `DISTILL_SIMD=portable` turns them all off (this project's portable paths then run
/// everywhere, as on a CPU without them; the `gemm` crate keeps its own dispatch), which is how
/// the fallbacks are checked on a machine that has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2_fma: bool,
    pub avx512f: bool,
    /// AVX512-VNNI (with AVX512BW): 64 u8·i8 products into 16 i32 lanes per instruction.
    pub avx512_vnni: bool,
    /// AVX-VNNI: the same dot products on 256-bit registers (Intel since Alder Lake, AMD Zen 5).
    pub avx_vnni: bool,
    /// AVX512-BF16: pairs of bf16 products into f32 lanes.
    pub avx512_bf16: bool,
}

impl CpuFeatures {
    pub const NONE: CpuFeatures =
        CpuFeatures { avx2_fma: false, avx512f: false, avx512_vnni: false, avx_vnni: false, avx512_bf16: false };

    fn detect() -> CpuFeatures {
        if std::env::var("DISTILL_SIMD").is_ok_and(|v| v.eq_ignore_ascii_case("portable")) {
            return CpuFeatures::NONE;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx512f = is_x86_feature_detected!("avx512f");
            CpuFeatures {
                avx2_fma: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                avx512f,
                avx512_vnni: avx512f && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni"),
                avx_vnni: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni"),
                avx512_bf16: avx512f && is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::NONE
    }
}

/// This CPU's features (all off under `DISTILL_SIMD=portable`).
pub fn cpu_features() -> CpuFeatures {
    static FEATURES: std::sync::OnceLock<CpuFeatures> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(CpuFeatures::detect)
}
