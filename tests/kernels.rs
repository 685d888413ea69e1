//! Every kernel in kernels/ compiles to PTX with NVRTC 13.0 (no GPU needed: scripts/setup
//! installs NVRTC from PyPI), and a kernel that does not compile is an error with NVRTC's log.

use distill::gpu::{compile, compile_all, KERNELS};

#[test]
fn every_kernel_compiles_to_ptx() {
    if let Err(e) = distill::gpu::load_nvrtc() {
        eprintln!("skipped: {e:#}");
        return;
    }
    let compiled = compile_all().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(compiled.len(), KERNELS.len());
    for (name, ptx) in &compiled {
        let text = ptx.to_src();
        assert!(text.contains(".target sm_80"), "{name}: {}", &text[..text.len().min(400)]);
        for entry in ["lstm_cell_forward", "lstm_cell_backward"] {
            assert!(text.contains(&format!(".entry {entry}")), "{name} lacks {entry}");
        }
    }
    let broken = "extern \"C\" __global__ void k(float *x) { x[0] = undefined_name; }";
    let e = format!("{:#}", compile("broken.cu", broken).unwrap_err());
    assert!(e.contains("kernels/broken.cu") && e.contains("undefined_name"), "{e}");
}

#[test]
fn no_gpu_is_said_clearly() {
    if let Err(e) = distill::gpu::driver_present() {
        let message = format!("{e:#}");
        assert!(message.contains("no GPU found"), "{message}");
    }
}
