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
    /// Of `pos`, the items a resumed run found already done: not part of the rate.
    skipped: u64,
    start: Instant,
    last: Instant,
}

impl PlainProgress {
    fn line(&self, elapsed: f64) -> String {
        let rate = (self.pos - self.skipped) as f64 / elapsed.max(1e-9);
        let eta = (self.len - self.pos) as f64 / rate.max(1e-9);
        format!("{}: {}/{} ({:.1}/s, {:.0} s elapsed, ETA {:.0} s)", self.what, self.pos, self.len, rate, elapsed, eta)
    }
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            p.pos += n;
            if p.last.elapsed().as_secs() >= 30 && p.pos < p.len {
                p.last = Instant::now();
                eprintln!("{}", p.line(p.start.elapsed().as_secs_f64()));
            }
        }
    }

    /// Moves past `n` items a resumed run finds already done, leaving them out of the rate
    /// and ETA (counted in, a resumed stage showed ten times its real speed).
    pub fn skip(&self, n: u64) {
        self.bar.inc(n);
        // The bar's estimator weighs recent progress; start it afresh after the jump.
        self.bar.tick();
        self.bar.reset_eta();
        if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            p.pos += n;
            p.skipped += n;
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
        std::sync::Mutex::new(PlainProgress { what: what.to_string(), len, pos: 0, skipped: 0, start: Instant::now(), last: Instant::now() })
    });
    Progress { bar, plain }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_items_are_left_out_of_the_rate_and_eta() {
        let now = Instant::now();
        let resumed = PlainProgress { what: "student".into(), len: 10_530, pos: 2_106 + 300, skipped: 2_106, start: now, last: now };
        assert_eq!(resumed.line(30.0), "student: 2406/10530 (10.0/s, 30 s elapsed, ETA 812 s)");
        let fresh = PlainProgress { skipped: 0, pos: 300, ..resumed };
        assert_eq!(fresh.line(30.0), "student: 300/10530 (10.0/s, 30 s elapsed, ETA 1023 s)");
    }
}
