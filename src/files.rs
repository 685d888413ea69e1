//! Files written whole or not at all: to a temporary name in the same folder, then renamed
//! into place, so a crash never leaves half a file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// An exclusive lock on a file (created if missing), held until dropped. Processes that
/// write the same thing (two runs of one experiment, sweep shards) take turns through it.
pub struct FileLock {
    _file: std::fs::File,
}

/// Waits for the lock on `path`; `what` says in the waiting line what is locked.
pub fn lock(path: &Path, what: &str) -> Result<FileLock> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            eprintln!("waiting for {what}: {} is held by distill process {}", path.display(), holder.trim());
            file.lock().with_context(|| format!("{}: cannot lock", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("{}: cannot lock", path.display())),
    }
    // The holder's pid, for the waiting line of the next process.
    let mut file = file;
    file.set_len(0).ok();
    write!(file, "{}", std::process::id()).ok();
    Ok(FileLock { _file: file })
}

/// Removes `.NAME.tmp-PID` files (and folders) in `dir` left by processes that no longer run.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).map(|(_, pid)| pid.trim_end_matches(".old")) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if removed.is_ok() {
            eprintln!("removed {} (left by a process that ended)", path.display());
        }
    }
}

/// Whether `path` is a whole safetensors file: its header parses, the file is as long as
/// the header's last tensor says (a truncated copy is not), and where distill recorded the
/// tensors' hash at save (`distill.sha256`), they still have it (a damaged copy has not).
pub fn safetensors_intact(path: &Path) -> bool {
    use crate::models::layers::{content_hash, CONTENT_HASH_KEY};
    use std::io::Read;
    let check = || -> Option<bool> {
        let mut file = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).ok()?;
        let header_len = u64::from_le_bytes(len);
        let mut header = vec![0u8; usize::try_from(header_len).ok().filter(|&n| n < 100 << 20)?];
        file.read_exact(&mut header).ok()?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
        let end = header.values().filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
        if Some(file.metadata().ok()?.len()) != end.checked_add(8 + header_len) {
            return Some(false);
        }
        let Some(recorded) = header.get("__metadata__").and_then(|m| m.get(CONTENT_HASH_KEY)).and_then(|h| h.as_str()) else {
            return Some(true);
        };
        let bytes = std::fs::read(path).ok()?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let named: Vec<(String, safetensors::tensor::TensorView)> = tensors.tensors();
        Some(content_hash(named.iter().map(|(name, view)| (name.as_str(), view.data()))) == recorded)
    };
    check().unwrap_or(false)
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    file.write_all(bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    file.sync_all().ok();
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

/// Builds the folder `dir` under a temporary name beside it (`fill` writes its files), then
/// renames it into place; an existing `dir` is moved aside first and removed after.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create the folder", parent.display()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    fill(&tmp)?;
    let old = tmp.with_extension("old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("{}: cannot move aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("{}: cannot rename into place", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

