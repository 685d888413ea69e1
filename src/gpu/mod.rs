//! GPU support through cudarc 0.19 (dynamic loading: the binary builds and runs with no CUDA
//! present). The kernels in `kernels/*.cu` are compiled at run time with NVRTC; this module
//! finds the NVRTC and driver libraries, compiles the kernels, and wraps the one stream, the
//! cuBLAS handle and the kernel launches that the GPU models ([`student`]) use.
//!
//! NVRTC comes from the system (`LD_LIBRARY_PATH`) or from PyPI `nvidia-cuda-nvrtc==13.0.88`,
//! which `scripts/setup` unpacks into `$DISTILL_HOME/cuda/lib` (override: `DISTILL_NVRTC`).

pub mod bert;
pub mod student;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// Every kernel source, by file name. Compiled together with the binary's sources, so a
/// kernel can never be missing at run time.
pub const KERNELS: &[(&str, &str)] = &[
    ("lstm_cell.cu", include_str!("../../kernels/lstm_cell.cu")),
    ("student.cu", include_str!("../../kernels/student.cu")),
    ("bert.cu", include_str!("../../kernels/bert.cu")),
];

/// The kernel entry points a source defines (`extern "C" __global__ void NAME(`).
pub fn kernel_entries(source: &str) -> Vec<&str> {
    source
        .split("__global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .collect()
}

/// The virtual architecture the PTX targets: the driver JIT-compiles it for newer GPUs
/// (the lent machines' H100/H200 are sm_90).
pub const PTX_ARCH: &str = "compute_80";

/// Where NVRTC is looked for when the system has none on its library path.
pub fn bundled_nvrtc() -> PathBuf {
    match std::env::var("DISTILL_NVRTC") {
        Ok(path) if !path.is_empty() => PathBuf::from(path),
        _ => crate::config::distill_home().join("cuda/lib/libnvrtc.so.13"),
    }
}

/// Makes NVRTC loadable: the system's, or the bundled one. cudarc opens libraries by name;
/// loading ours by path first makes that name resolve to it (the loader reuses a library
/// already loaded under the same soname).
pub fn load_nvrtc() -> Result<()> {
    // SAFETY: only probes whether the library can be opened.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let path = bundled_nvrtc();
    if !path.is_file() {
        bail!(
            "NVRTC (libnvrtc) is not installed: none on the library path and no {}; run scripts/setup, or set DISTILL_NVRTC to a libnvrtc.so",
            path.display()
        );
    }
    // NVRTC opens its builtins library by name when it compiles: load it from beside it.
    let builtins = path.with_file_name("libnvrtc-builtins.so.13.0");
    for lib_path in [&builtins, &path] {
        if lib_path.is_file() {
            // SAFETY: loading these libraries runs their initialisers, which have no preconditions.
            let lib = unsafe { libloading::Library::new(lib_path) }
                .with_context(|| format!("{}: cannot load", lib_path.display()))?;
            std::mem::forget(lib); // stays loaded for the life of the process
        }
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("{}: loaded, but cudarc still finds no NVRTC under its names (libnvrtc.so.13)", path.display());
    }
    Ok(())
}

/// Compiles one kernel source to PTX; a compile error carries NVRTC's log.
pub fn compile(name: &str, source: &str) -> Result<Ptx> {
    load_nvrtc()?;
    let opts = CompileOptions { arch: Some(PTX_ARCH), name: Some(name.to_string()), ..Default::default() };
    compile_ptx_with_opts(source, opts).map_err(|e| anyhow::anyhow!("kernels/{name}: does not compile: {e:?}"))
}

/// Compiles every kernel in [`KERNELS`].
pub fn compile_all() -> Result<Vec<(&'static str, Ptx)>> {
    KERNELS.iter().map(|(name, src)| Ok((*name, compile(name, src)?))).collect()
}

/// Whether a CUDA driver (and so possibly a GPU) is present; the message says what is missing.
pub fn driver_present() -> Result<()> {
    // SAFETY: only probes whether the library can be opened.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        bail!("no GPU found: the CUDA driver (libcuda.so) is not installed on this machine; use device = \"cpu\"")
    }
}

/// One GPU: its context, a stream, a cuBLAS handle on that stream, and every kernel of
/// [`KERNELS`], loaded by name.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<String, CudaFunction>,
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

impl Gpu {
    /// Opens GPU 0 and compiles and loads the kernels; says clearly when there is no GPU.
    pub fn new() -> Result<Gpu> {
        driver_present()?;
        let ctx = CudaContext::new(0)
            .map_err(|e| anyhow::anyhow!("no GPU found: the CUDA driver is installed but opening GPU 0 failed ({e:?}); use device = \"cpu\""))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow::anyhow!("cuBLAS: cannot start ({e:?}); is libcublas on the library path?"))?;
        let mut functions = HashMap::new();
        for ((name, source), (_, ptx)) in KERNELS.iter().zip(compile_all()?) {
            let module = ctx.load_module(ptx).map_err(|e| anyhow::anyhow!("kernels/{name}: cannot load the PTX ({e:?})"))?;
            for entry in kernel_entries(source) {
                let f = module.load_function(entry).map_err(|e| anyhow::anyhow!("kernels/{name}: no entry {entry} ({e:?})"))?;
                functions.insert(entry.to_string(), f);
            }
        }
        Ok(Gpu { ctx, stream, blas, functions })
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// A loaded kernel. Names are compile-time constants of this crate, so a missing one is a bug.
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("no kernel named {name} in kernels/"))
    }

    /// Launch configuration for `n` threads in blocks of [`BLOCK`].
    pub fn grid(n: usize) -> LaunchConfig {
        let blocks = (n as u32).div_ceil(BLOCK).max(1);
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(values).map_err(|e| anyhow::anyhow!("GPU: copy to device failed ({e:?})"))
    }

    pub fn download<T: cudarc::driver::DeviceRepr, S: DevicePtr<T>>(&self, values: &S) -> Result<Vec<T>> {
        self.stream.clone_dtoh(values).map_err(|e| anyhow::anyhow!("GPU: copy to host failed ({e:?})"))
    }

    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros(n.max(1)).map_err(|e| anyhow::anyhow!("GPU: cannot allocate {n} floats ({e:?})"))
    }

    pub fn set_zero<S: DevicePtrMut<f32>>(&self, values: &mut S) -> Result<()> {
        self.stream.memset_zeros(values).map_err(|e| anyhow::anyhow!("GPU: memset failed ({e:?})"))
    }

    pub fn copy<S: DevicePtr<f32>, D: DevicePtrMut<f32>>(&self, src: &S, dst: &mut D) -> Result<()> {
        self.stream.memcpy_dtod(src, dst).map_err(|e| anyhow::anyhow!("GPU: device copy failed ({e:?})"))
    }

    /// A fresh device copy of `src`.
    pub fn copy_new(&self, src: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let mut out = self.zeros(src.len())?;
        self.copy(src, &mut out)?;
        Ok(out)
    }

    /// Row-major `c[m×n] = op(a)·op(b) + beta·c`, where `op(a)` is `m×k` (`a` is stored `k×m`
    /// when `a_t`) and `op(b)` is `k×n` (stored `n×k` when `b_t`). cuBLAS is column-major, and a
    /// row-major matrix read column-major is its transpose, so this computes `cᵀ = op(b)ᵀ·op(a)ᵀ`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        c: &mut C,
        a: &A,
        a_t: bool,
        b: &B,
        b_t: bool,
        (m, n, k): (usize, usize, usize),
        beta: f32,
    ) -> Result<()> {
        debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matmul: operand too small");
        let cfg = row_major_gemm(a_t, b_t, (m, n, k), beta);
        // SAFETY: the leading dimensions and sizes above match the operands' lengths (checked in debug builds).
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| anyhow::anyhow!("cuBLAS sgemm {m}×{n}×{k} failed ({e:?})"))
    }

    /// Row-major [`Gpu::matmul`] over `batch` independent matrices laid out `strides`
    /// (a, b, c) elements apart.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_batched<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        c: &mut C,
        a: &A,
        a_t: bool,
        b: &B,
        b_t: bool,
        (m, n, k): (usize, usize, usize),
        batch: usize,
        (stride_a, stride_b, stride_c): (usize, usize, usize),
    ) -> Result<()> {
        let cfg = cudarc::cublas::StridedBatchedConfig {
            gemm: row_major_gemm(a_t, b_t, (m, n, k), 0.0),
            batch_size: batch as i32,
            stride_a: stride_b as i64,
            stride_b: stride_a as i64,
            stride_c: stride_c as i64,
        };
        // SAFETY: as in `matmul`, with each of the `batch` matrices inside its operand.
        unsafe { self.blas.gemm_strided_batched(cfg, b, a, c) }
            .map_err(|e| anyhow::anyhow!("cuBLAS batched sgemm {batch}×({m}×{n}×{k}) failed ({e:?})"))
    }

    /// Waits for the stream; a kernel fault shows up here.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| anyhow::anyhow!("GPU: a kernel failed ({e:?})"))
    }
}

/// cuBLAS (column-major) settings for the row-major product `c[m×n] = op(a)·op(b) + beta·c`
/// (see [`Gpu::matmul`]): a row-major matrix read column-major is its transpose, so cuBLAS
/// computes `cᵀ = op(b)ᵀ·op(a)ᵀ`, with `b` passed first.
fn row_major_gemm(a_t: bool, b_t: bool, (m, n, k): (usize, usize, usize), beta: f32) -> GemmConfig<f32> {
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    GemmConfig {
        transa: op(b_t),
        transb: op(a_t),
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: if b_t { k } else { n } as i32,
        ldb: if a_t { m } else { k } as i32,
        beta,
        ldc: n as i32,
    }
}

/// Launches kernel `$name` over `$n` threads (or `@rows R`: one block of 256 threads per row)
/// with the given arguments (device buffers by reference, scalars as `&i32`/`&f32`/`&u32`).
#[macro_export]
macro_rules! launch {
    // One block of 256 threads per row (kernels that reduce over a row).
    ($gpu:expr, $name:expr, @rows $rows:expr; $($arg:expr),+ $(,)?) => {{
        use cudarc::driver::PushKernelArg;
        let gpu: &$crate::gpu::Gpu = $gpu;
        let mut builder = gpu.stream.launch_builder(gpu.function($name));
        // Bound by `let` so that temporaries (`&(n as i32)`) live until the launch.
        $( let arg = $arg; builder.arg(arg); )+
        let cfg = cudarc::driver::LaunchConfig { grid_dim: (($rows) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: each kernel's arguments are listed in the order and types of its signature in kernels/.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("kernel {} failed to launch ({e:?})", $name))
    }};
    ($gpu:expr, $name:expr, $n:expr; $($arg:expr),+ $(,)?) => {{
        use cudarc::driver::PushKernelArg;
        let gpu: &$crate::gpu::Gpu = $gpu;
        let mut builder = gpu.stream.launch_builder(gpu.function($name));
        $( let arg = $arg; builder.arg(arg); )+
        let cfg = $crate::gpu::Gpu::grid($n);
        // SAFETY: as above.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("kernel {} failed to launch ({e:?})", $name))
    }};
}
