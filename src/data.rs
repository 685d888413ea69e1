//! Tasks and their TSV loaders.
//!
//! Columns are found by header name, so one loader reads every split of every task
//! (ChnSentiCorp's dev file has an extra `qid` column, MRPC's starts with a BOM).
//! A malformed row stops the load with `file:line: what is wrong`, unless the
//! experiment opts in to skipping bad rows, in which case they are counted.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{CustomColumns, TaskName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Chinese,
}

/// What a loader needs to know about a task.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: TaskName,
    pub text_a_column: String,
    pub text_b_column: Option<String>,
    pub label_column: String,
    /// Label strings as written in the file, in class-index order.
    pub labels: Vec<String>,
    pub language: Language,
}

impl Task {
    pub fn new(name: TaskName, custom: Option<&CustomColumns>) -> Task {
        let binary = || vec!["0".to_string(), "1".to_string()];
        let t = |a: &str, b: Option<&str>, label: &str, language| Task {
            name,
            text_a_column: a.into(),
            text_b_column: b.map(Into::into),
            label_column: label.into(),
            labels: binary(),
            language,
        };
        match name {
            TaskName::Sst2 => t("sentence", None, "label", Language::English),
            TaskName::Chnsenticorp => t("text_a", None, "label", Language::Chinese),
            TaskName::Mrpc => t("#1 String", Some("#2 String"), "Quality", Language::English),
            TaskName::Qqp => t("question1", Some("question2"), "is_duplicate", Language::English),
            TaskName::Custom => {
                let c = custom.expect("config check guarantees [data.columns] for custom tasks");
                Task {
                    name,
                    text_a_column: c.text_a.clone(),
                    text_b_column: c.text_b.clone(),
                    label_column: c.label.clone(),
                    labels: c.labels.clone(),
                    language: Language::English,
                }
            }
        }
    }

    pub fn is_pair(&self) -> bool {
        self.text_b_column.is_some()
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    /// Malformed rows skipped (only when skipping was asked for).
    pub skipped: usize,
}

/// A malformed input file, with the line it was found on.
#[derive(Debug)]
pub struct DataError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for DataError {}

/// The SHA-256 of an experiment's train and dev files. Run ids and stage keys are hashes of the
/// config, not of the data, so a stage that finished before a data file was edited would be
/// found again; each finished stage records its digest (`data.sha256` in its folder, in
/// `sha256sum` format) and a rerun compares it before reusing the stage.
#[derive(Debug)]
pub struct DataDigest {
    /// `(hex digest, path)` of the train file, then the dev file.
    files: Vec<(String, PathBuf)>,
}

impl DataDigest {
    pub const FILE_NAME: &'static str = "data.sha256";

    pub fn of(train: &Path, dev: &Path) -> std::io::Result<DataDigest> {
        Ok(DataDigest { files: vec![(file_sha256(train)?, train.to_path_buf()), (file_sha256(dev)?, dev.to_path_buf())] })
    }

    /// The digest of the train and dev files `exp` reads.
    pub fn of_experiment(exp: &crate::config::Experiment) -> std::io::Result<DataDigest> {
        let dir = crate::config::expand_path(&exp.data.dir);
        DataDigest::of(&dir.join(&exp.data.train), &dir.join(&exp.data.dev))
    }

    /// Records the digest in a stage's folder.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let text: String = self.files.iter().map(|(hex, path)| format!("{hex}  {}\n", path.display())).collect();
        crate::files::write_atomic(&dir.join(Self::FILE_NAME), text.as_bytes())
    }

    /// `Err` naming the file that changed when `dir` records other data; `Ok` when it records
    /// the same, or nothing (stages finished before digests were kept).
    pub fn check(&self, dir: &Path) -> Result<(), String> {
        let Ok(text) = std::fs::read_to_string(dir.join(Self::FILE_NAME)) else { return Ok(()) };
        let recorded: Vec<&str> = text.lines().filter_map(|line| line.split_once("  ").map(|(hex, _)| hex)).collect();
        for ((hex, path), then) in self.files.iter().zip(recorded) {
            if *hex != then {
                return Err(format!("{} has changed since (sha256 {}… then, {}… now)", path.display(), &then[..then.len().min(12)], &hex[..12]));
            }
        }
        Ok(())
    }
}

/// The hex SHA-256 of a file. Remembered per path, size and modification time for the
/// process (`distill reproduce` looks up every cell's stages, each against its data), unless
/// the file was modified in the last seconds: a write within the clock's granularity after
/// the hash could leave the same time, as git's index knows ("racy" entries).
fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    type Seen = std::collections::HashMap<PathBuf, (u64, std::time::SystemTime, String)>;
    static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> = std::sync::LazyLock::new(Default::default);
    let meta = std::fs::metadata(path)?;
    let stamp = (meta.len(), meta.modified()?);
    let key = std::fs::canonicalize(path)?;
    if let Some((len, modified, hex)) = SEEN.lock().unwrap().get(&key) {
        if (*len, *modified) == stamp {
            return Ok(hex.clone());
        }
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let settled = stamp.1.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(2));
    if settled {
        SEEN.lock().unwrap().insert(key, (stamp.0, stamp.1, hex.clone()));
    }
    Ok(hex)
}

/// Options of one load.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub skip_bad_rows: bool,
    /// Keep only the first N rows (0 = all).
    pub limit: usize,
}

/// Reads a labelled split of `task` from a TSV file with a header row.
pub fn load_split(task: &Task, path: &Path, opts: LoadOptions) -> Result<Dataset, DataError> {
    let fail = |line: Option<u64>, message: String| DataError { path: path.to_path_buf(), line, message };
    let bytes = std::fs::read(path).map_err(|e| {
        fail(None, format!("cannot read the data file: {e} (is ../shared/data there, or data.dir set right?)"))
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&bytes);
    // GLUE files are TSV without quoting: a `"` inside a sentence is just a character.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = reader.byte_records();

    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(fail(Some(1), format!("cannot read the header: {e}"))),
        None => return Err(fail(None, "the file is empty; expected a header row".into())),
    };
    let header: Vec<String> = header
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            fail(
                Some(1),
                format!("no column named {name:?} in the header {header:?}; is this a {:?} file?", task.name),
            )
        })
    };
    let a_col = column(&task.text_a_column)?;
    let b_col = task.text_b_column.as_deref().map(column).transpose()?;
    let label_col = column(&task.label_column)?;

    let mut examples = Vec::new();
    let mut skipped = 0;
    for record in records {
        if opts.limit > 0 && examples.len() >= opts.limit {
            break;
        }
        let record = record.map_err(|e| fail(None, format!("cannot read a row: {e}")))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
            continue; // blank line, e.g. a trailing newline pair
        }
        match parse_row(task, &record, header.len(), a_col, b_col, label_col) {
            Ok(example) => examples.push(example),
            Err(_) if opts.skip_bad_rows => skipped += 1,
            Err(message) => {
                return Err(fail(
                    Some(line),
                    format!("{message} (fix the row, or set data.skip_bad_rows = true to skip such rows)"),
                ))
            }
        }
    }
    if examples.is_empty() {
        let what = if skipped > 0 { format!("all {skipped} rows are malformed and were skipped") } else { "only a header".to_string() };
        return Err(fail(None, format!("no usable rows ({what}); every split needs at least one labelled row")));
    }
    Ok(Dataset { path: path.to_path_buf(), examples, skipped })
}

fn parse_row(
    task: &Task,
    record: &csv::ByteRecord,
    columns: usize,
    a_col: usize,
    b_col: Option<usize>,
    label_col: usize,
) -> Result<Example, String> {
    if record.len() != columns {
        return Err(format!("expected {columns} tab-separated columns, found {}", record.len()));
    }
    let field = |i: usize, what: &str| -> Result<String, String> {
        let text = std::str::from_utf8(&record[i]).map_err(|_| format!("{what} is not valid UTF-8"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("{what} is empty"));
        }
        Ok(text.to_string())
    };
    let text_a = field(a_col, &format!("column {:?}", task.text_a_column))?;
    let text_b = match b_col {
        Some(i) => Some(field(i, &format!("column {:?}", task.text_b_column.as_deref().unwrap_or("")))?),
        None => None,
    };
    let raw_label = field(label_col, "the label")?;
    let label = task
        .labels
        .iter()
        .position(|l| *l == raw_label)
        .ok_or_else(|| format!("label {raw_label:?} is not one of {:?}", task.labels))?;
    Ok(Example { text_a, text_b, label })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered digest is not reused once the file changes, even to the same length; and a
    /// file written a moment ago is hashed afresh each time, whatever its modification time.
    #[test]
    fn a_remembered_file_digest_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tsv");
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let write = |text: &str, modified: Option<std::time::SystemTime>| {
            std::fs::write(&path, text).unwrap();
            if let Some(t) = modified {
                std::fs::File::options().write(true).open(&path).unwrap().set_modified(t).unwrap();
            }
        };
        write("sentence\tlabel\na\t0\n", Some(an_hour_ago));
        let first = file_sha256(&path).unwrap();
        assert_eq!(file_sha256(&path).unwrap(), first);
        write("sentence\tlabel\na\t1\n", None);
        let edited = file_sha256(&path).unwrap();
        assert_ne!(edited, first);
        // Just written, so not remembered: an edit that keeps size and time is still seen.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        write("sentence\tlabel\nb\t1\n", Some(modified));
        assert_ne!(file_sha256(&path).unwrap(), edited);
    }
}
