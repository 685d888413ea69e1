//! Shared by the test binaries that need the real pretrained assets.

use std::path::PathBuf;

/// The all-MiniLM-L6-v2 dir from `scripts/setup`, or `None` (with a "skipped" line) without it.
pub fn minilm() -> Option<PathBuf> {
    let dir = distill::config::distill_home().join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: {} is missing; run scripts/setup", dir.display());
        None
    }
}
