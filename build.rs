//! Stamps the binary with the commit its sources came from, so `results.csv` names the code that
//! produced a row, not whatever the checkout holds when the row is written (a run can outlive
//! a commit, and the binary can run from anywhere).

use std::path::Path;
use std::process::Command;

/// What a build's result depends on: a change to any of these, uncommitted, marks the build dirty.
const SOURCES: [&str; 5] = ["src", "kernels", "Cargo.toml", "Cargo.lock", "build.rs"];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            // A new commit rewrites the branch's ref and HEAD's reflog (HEAD itself on a switch);
            // watch only files that exist, as cargo reruns the script on every build for a missing one.
            let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|b| b.starts_with("refs/"));
            for name in ["HEAD", "logs/HEAD"].into_iter().map(String::from).chain(branch) {
                if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                    if Path::new(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
            }
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            match git(&status) {
                Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
                _ => commit,
            }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=DISTILL_BUILD_COMMIT={commit}");
}
