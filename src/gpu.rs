//! GPU support through cudarc 0.19 (dynamic loading: the binary builds and runs with no CUDA
//! present). The kernels in `kernels/*.cu` are compiled at run time with NVRTC; this module
//! finds the NVRTC and driver libraries and compiles the kernels.
//!
//! NVRTC comes from the system (`LD_LIBRARY_PATH`) or from PyPI `nvidia-cuda-nvrtc==13.0.88`,
//! which `scripts/setup` unpacks into `$DISTILL_HOME/cuda/lib` (override: `DISTILL_NVRTC`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// Every kernel source, by file name. Compiled together with the binary's sources, so a
/// kernel can never be missing at run time.
pub const KERNELS: &[(&str, &str)] = &[("lstm_cell.cu", include_str!("../kernels/lstm_cell.cu"))];

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
