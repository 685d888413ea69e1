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


/// Compiles `$generic` twice more, for AVX-512 and for AVX2+FMA, as `unsafe` functions to be
/// called only where `is_x86_feature_detected!` reports the features.
macro_rules! dispatch {
    ($generic:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx512($($arg: $ty),*) {
            $generic($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) {
            $generic($($arg),*)
        }
    };
}

pub(crate) use dispatch;
