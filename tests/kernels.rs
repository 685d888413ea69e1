//! Every kernel in kernels/ compiles to PTX with NVRTC 13.0 (no GPU needed: scripts/setup
//! installs NVRTC from PyPI), and a kernel that does not compile is an error with NVRTC's log.

use distill::gpu::{compile, compile_all, kernel_entries, KERNELS};

#[test]
fn every_kernel_compiles_to_ptx() {
    if let Err(e) = distill::gpu::load_nvrtc() {
        eprintln!("skipped: {e:#}");
        return;
    }
    let compiled = compile_all().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(compiled.len(), KERNELS.len());
    for ((name, ptx), (_, source)) in compiled.iter().zip(KERNELS) {
        let text = ptx.to_src();
        assert!(text.contains(".target sm_80"), "{name}: {}", &text[..text.len().min(400)]);
        let entries = kernel_entries(source);
        assert!(!entries.is_empty(), "{name}: no kernels found");
        for entry in entries {
            assert!(text.contains(&format!(".entry {entry}(")), "{name} lacks {entry}");
        }
    }
    let all: Vec<&str> = KERNELS.iter().flat_map(|(_, s)| kernel_entries(s)).collect();
    for entry in ["lstm_cell_forward", "lstm_cell_backward", "gather_rows", "adadelta_rows", "adam"] {
        assert!(all.contains(&entry), "no kernel {entry}: {all:?}");
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
        // A `device = "cuda"` run stops before it creates its run dir.
        let out = tempfile::tempdir().unwrap();
        let overrides = ["device=\"cuda\"".to_string(), format!("out_dir=\"{}\"", out.path().display())];
        let exp = distill::config::Experiment::parse(distill::config::QUICKSTART_TOML, "quickstart.toml", &overrides)
            .unwrap_or_else(|e| panic!("{e}"));
        let e = distill::train::run_experiment(exp).unwrap_err();
        assert!(format!("{e:#}").contains("no GPU found"), "{e:#}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "a run dir was left behind");
    }
}
