//! Progress lines for long loops.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress with rate and ETA: a bar on a terminal; elsewhere (logs, `nohup`, CI) a plain
/// line at most every 30 s, so long runs still show where they are.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<std::sync::Mutex<PlainProgress>>,
}

struct PlainProgress {
    what: String,
    len: u64,
    pos: u64,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            p.pos += n;
            if p.last.elapsed().as_secs() >= 30 && p.pos < p.len {
                p.last = Instant::now();
                let elapsed = p.start.elapsed().as_secs_f64();
                let rate = p.pos as f64 / elapsed.max(1e-9);
                let eta = (p.len - p.pos) as f64 / rate.max(1e-9);
                eprintln!("{}: {}/{} ({:.1}/s, {:.0} s elapsed, ETA {:.0} s)", p.what, p.pos, p.len, rate, elapsed, eta);
            }
        }
    }

    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn progress_bar(len: u64, what: &str) -> Progress {
    use std::io::IsTerminal;
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let plain = (!std::io::stderr().is_terminal()).then(|| {
        std::sync::Mutex::new(PlainProgress { what: what.to_string(), len, pos: 0, start: Instant::now(), last: Instant::now() })
    });
    Progress { bar, plain }
}
