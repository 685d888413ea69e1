//! The whole student stage on small slices of the real data: run directory, resolved config,
//! metrics.csv, results.csv, checkpoint; and the CLI's error path.

use std::path::Path;

use distill::config::Experiment;
use distill::models::bilstm::BiLstmStudent;

fn shared(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel).display().to_string()
}

#[test]
fn chnsenticorp_slice_trains_and_reports() {
    let out = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
name = "e2e-chn"
task = "chnsenticorp"
out_dir = "{out}"

[data]
dir = "{data}"
train_limit = 1500
dev_limit = 300

[vocab]
kind = "jieba"
min_count = 1

[student]
embedding_dim = 32
hidden_size = 32
dropout = 0.1
max_seq_len = 48
optimizer = "adam"
lr = 3e-3
batch_size = 32
epochs = 3
"#,
        out = out.path().display(),
        data = shared("ChnSentiCorp")
    );
    let exp = Experiment::parse(&toml, "e2e.toml", &[]).unwrap();
    let rows = distill::train::run_experiment(exp.clone()).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert!(row.dev_accuracy > 0.65, "the student should learn something: {}", row.dev_accuracy);
    assert!(row.train_sentences_per_s > 0.0 && row.params > 0);

    let run_dir = Path::new(&row.run_dir);
    assert!(run_dir.starts_with(out.path()));
    let saved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert_eq!(Experiment::parse(&saved, "saved", &[]).unwrap(), exp);

    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(lines.next().unwrap(), "stage,step,epoch,split,loss,accuracy,precision,recall,f1,elapsed_s");
    assert_eq!(metrics.lines().filter(|l| l.contains(",dev,")).count(), 3, "one dev row per epoch");

    let results = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 2, "header + one row");
    assert!(results.lines().nth(1).unwrap().starts_with("e2e-chn,chnsenticorp,student,"));

    // The kept checkpoint is the best epoch's model: it reproduces the reported dev accuracy.
    let model = BiLstmStudent::load(&run_dir.join("student/model.safetensors"), &dfdx::prelude::Cpu::default()).unwrap();
    let vocab: Vec<String> = std::fs::read_to_string(run_dir.join("student/vocab.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(vocab.len(), model.shape.vocab_size);
    let encoder = distill::tokenize::TextEncoder::jieba_with_vocab(distill::tokenize::Vocab::from_tokens(vocab).unwrap());
    let task = exp.task();
    let (_, dev) = distill::train::load_splits(&exp, &task).unwrap();
    let set = distill::encode::EncodedSet::new(&dev, &encoder, exp.student.as_ref().unwrap().max_seq_len);
    let student = distill::backend::StudentBackend::for_inference(model, distill::config::DeviceName::Cpu).unwrap();
    let eval = distill::inference::evaluate_student(&student, &set, 1, 64).unwrap();
    assert!((eval.metrics.accuracy - row.dev_accuracy).abs() < 1e-9);

    // No temporary files are left behind.
    let leftovers: Vec<_> = walk(out.path()).into_iter().filter(|p| p.contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn mrpc_pairs_with_wordpiece_vocab_and_glove_vectors() {
    let out = tempfile::tempdir().unwrap();
    // A small WordPiece vocab and GloVe file written here, so the test needs no downloaded assets.
    let mut words: Vec<&str> = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let common = "the , . of to a and in said that for on is was with he it 's by at from as has be his have will ' its million year percent shares company new";
    words.extend(common.split(' '));
    std::fs::write(out.path().join("vocab.txt"), words.join("\n")).unwrap();
    let glove: String = common
        .split(' ')
        .enumerate()
        .map(|(i, w)| format!("{w} {} {} {} {}\n", i as f32 * 0.1, 1.0, -0.5, (i % 3) as f32))
        .collect();
    std::fs::write(out.path().join("glove.txt"), glove).unwrap();
    let toml = format!(
        r#"
name = "e2e-mrpc"
task = "mrpc"
out_dir = "{out}"

[data]
dir = "{data}"
train_limit = 300
dev_limit = 100

[vocab]
kind = "wordpiece"
tokenizer = "{out}/vocab.txt"

[embeddings]
path = "{out}/glove.txt"
format = "glove"

[student]
embedding_dim = 4
hidden_size = 8
dropout = 0.0
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
"#,
        out = out.path().display(),
        data = shared("MRPC")
    );
    let exp = Experiment::parse(&toml, "e2e.toml", &[]).unwrap();
    let row = &distill::train::run_experiment(exp).unwrap()[0];
    assert_eq!(row.task, "mrpc");
    assert!((0.0..=1.0).contains(&row.dev_f1) && row.dev_accuracy > 0.0);

    // A dimension mismatch between vectors and student is a clear error.
    let bad = toml.replace("embedding_dim = 4", "embedding_dim = 5");
    let e = distill::train::run_experiment(Experiment::parse(&bad, "e2e.toml", &[]).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("student.embedding_dim = 5"), "{e:#}");
}

#[test]
fn cli_validate_reports_bad_files_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\ntask = \"imdb\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).arg("validate").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.toml:2") && text.contains("task") && text.contains("sst2"), "{text}");
}

/// A run whose data folder is missing stops before it starts: the error names the key and the
/// folder, and no run dir is left behind (there was one with its config.toml).
#[test]
fn cli_run_without_its_data_names_the_key_and_leaves_no_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "name = \"no-data\"\ntask = \"sst2\"\nout_dir = \"{}\"\n[data]\ndir = \"{}\"\n[vocab]\nkind = \"jieba\"\n\
         [student]\nembedding_dim = 8\nhidden_size = 8\ndropout = 0.0\noptimizer = \"adam\"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\n",
        dir.path().join("runs").display(),
        dir.path().join("SST-2").display()
    );
    std::fs::write(dir.path().join("no-data.toml"), toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).args(["run"]).arg(dir.path().join("no-data.toml")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key `data.dir`") && stderr.contains("SST-2: no such data folder"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("runs")).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");

    // So does one whose dev file has a bad row, or none; `distill validate` reads the rows too.
    std::fs::create_dir(dir.path().join("SST-2")).unwrap();
    std::fs::write(dir.path().join("SST-2/train.tsv"), "sentence\tlabel\ngood\t1\nbad\t0\n").unwrap();
    let distill = |command: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).arg(command).arg(dir.path().join("no-data.toml")).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    for (dev, expected) in [("sentence\tlabel\nfine\t1\nmeh\t2\n", "dev.tsv:3: label \"2\""), ("sentence\tlabel\n", "dev.tsv: no usable rows (only a header)")] {
        std::fs::write(dir.path().join("SST-2/dev.tsv"), dev).unwrap();
        for command in ["validate", "run"] {
            let (ok, text) = distill(command);
            assert!(!ok && text.contains(expected), "{command}: {text}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("runs")).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    std::fs::write(dir.path().join("SST-2/dev.tsv"), "sentence\tlabel\nfine\t1\n").unwrap();
    let (ok, text) = distill("validate");
    assert!(ok && text.contains("2 train and 1 dev rows"), "{text}");
}

/// `c.toml`, a student alone on a two-row custom task (`train.tsv`, `dev.tsv`) in `dir`; returns
/// the file's text.
fn tiny_custom_experiment(dir: &Path, epochs: usize) -> String {
    let toml = format!(
        "name = \"c\"\ntask = \"custom\"\n[data]\ndir = \".\"\n[data.columns]\ntext_a = \"sentence\"\nlabel = \"label\"\n\
         labels = [\"neg\", \"pos\"]\n[vocab]\nkind = \"jieba\"\n[student]\nembedding_dim = 8\nhidden_size = 8\ndropout = 0.0\n\
         optimizer = \"adam\"\nlr = 1e-3\nbatch_size = 8\nepochs = {epochs}\n"
    );
    std::fs::write(dir.join("c.toml"), &toml).unwrap();
    std::fs::write(dir.join("train.tsv"), "sentence\tlabel\nhello world\tpos\ngood day\tneg\n").unwrap();
    std::fs::write(dir.join("dev.tsv"), "sentence\tlabel\nhello\tpos\nfine\tneg\n").unwrap();
    toml
}

/// Run ids and stage keys hash the config, not the data: a stage that finished records the
/// SHA-256 of the files it read, and after a data file is edited a rerun neither takes that
/// stage as done (an error naming the file and `--force`) nor reuses it for another run with
/// the same stage key (trained again, with a note); `--force` trains it on the new data, and
/// on a run whose stage is a link to another run's, in its own folder.
#[test]
fn a_stage_that_read_other_data_is_not_taken_as_done() {
    let dir = tempfile::tempdir().unwrap();
    tiny_custom_experiment(dir.path(), 1);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).current_dir(dir.path()).args(["run", "c.toml"]).args(extra).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, log) = run(&[]);
    assert!(ok, "{log}");
    let recorded = std::fs::read_to_string(std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path().join("student/data.sha256")).unwrap();
    assert!(recorded.lines().count() == 2 && recorded.contains("train.tsv") && recorded.contains("dev.tsv"), "{recorded}");
    assert!(run(&[]).1.contains("already finished"));
    // `distill reproduce` (and `distill table`) find the cell the same way.
    std::fs::write(dir.path().join("t.toml"), "out = \"runs/table\"\n[[column]]\ntitle = \"C\"\nfile = \"c.toml\"\n").unwrap();
    let bi_lstm_cell = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).current_dir(dir.path()).args(["reproduce", "t.toml", "--dry-run"]).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        listing.lines().find(|l| l.trim_start().starts_with("Bi-LSTM")).unwrap_or_default().to_string()
    };
    assert!(bi_lstm_cell().contains("finished"), "{}", bi_lstm_cell());

    std::fs::write(dir.path().join("train.tsv"), "sentence\tlabel\nhello world\tpos\ngood day\tpos\n").unwrap();
    assert!(bi_lstm_cell().contains("missing (its run read other data: ") && bi_lstm_cell().contains("train.tsv has changed"), "{}", bi_lstm_cell());
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).current_dir(dir.path()).args(["table", "t.toml"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("C / Bi-LSTM: its run read other data (") && table.contains("--force"), "{table}");
    let (ok, log) = run(&[]);
    assert!(!ok && log.contains("read other data") && log.contains("train.tsv has changed") && log.contains("--force"), "{log}");
    let (ok, log) = run(&["--set", "name=\"c2\""]);
    assert!(ok && log.contains("not reused, it read other data") && !log.contains("reusing"), "{log}");
    let (ok, log) = run(&["--force"]);
    assert!(ok, "{log}");
    assert!(run(&[]).1.contains("already finished"));

    // A stage reused by link, trained again with --force, trains in its own run's folder:
    // the run it was linked to keeps its model and result.
    let (ok, log) = run(&["--set", "name=\"c3\""]);
    assert!(ok && log.contains("reusing"), "{log}");
    let run_of = |name: &str| std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().map(|e| e.path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}-"))).unwrap();
    let linked = run_of("c3").join("student");
    assert!(linked.is_symlink());
    let original = std::fs::canonicalize(&linked).unwrap();
    let before = (std::fs::read(original.join("model.safetensors")).unwrap(), std::fs::read_to_string(original.join("result.json")).unwrap());
    let (ok, log) = run(&["--set", "name=\"c3\"", "--force"]);
    assert!(ok, "{log}");
    assert!(!linked.is_symlink() && linked.join("model.safetensors").is_file());
    let after = (std::fs::read(original.join("model.safetensors")).unwrap(), std::fs::read_to_string(original.join("result.json")).unwrap());
    assert!(before == after, "--force on the linked stage wrote into the run it was linked to");
    assert!(std::fs::read_to_string(linked.join("result.json")).unwrap().contains("\"c3\""));
}

/// A stage stopped part-way keeps the data it read in its resume checkpoint: after the train
/// file is edited, `distill run` does not continue from it (an error naming the file and
/// `--force`, the checkpoint kept), while `distill reproduce`, whose job is the table from the
/// files as they are, trains the stage again from the start on the new data.
#[test]
fn an_interrupted_stage_does_not_resume_on_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let toml = tiny_custom_experiment(dir.path(), 2);
    let no_teacher = "pending = \"no teacher here\"";
    let spec = format!("[[column]]\ntitle = \"C\"\nfile = \"c.toml\"\n[column.teacher]\n{no_teacher}\n[column.distilled]\n{no_teacher}\n");
    std::fs::write(dir.path().join("t.toml"), spec).unwrap();
    let distill = |args: &[&str], stop: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_distill"));
        command.current_dir(dir.path()).args(args);
        if stop {
            command.env("DISTILL_STOP_AFTER_EVALUATIONS", "1");
        }
        let out = command.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, log) = distill(&["run", "c.toml"], true);
    assert!(!ok && log.contains("stops here"), "{log}");
    let run_dir = std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    let checkpoint = run_dir.join("student.resume");
    assert!(std::fs::read_to_string(checkpoint.join("data.sha256")).unwrap().contains("train.tsv"));

    std::fs::write(dir.path().join("train.tsv"), "sentence\tlabel\nhello world\tpos\ngood day\tpos\n").unwrap();
    let (ok, log) = distill(&["run", "c.toml"], false);
    assert!(!ok && log.contains("student.resume: that student stage read other data") && log.contains("train.tsv has changed") && log.contains("--force"), "{log}");
    assert!(checkpoint.join("loop.json").is_file(), "the checkpoint is kept for the user to decide");
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).current_dir(dir.path()).args(["reproduce", "t.toml", "--dry-run"]).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.contains("student: train") && !plan.contains("resume after"), "{plan}");
    let (ok, log) = distill(&["reproduce", "t.toml"], false);
    assert!(ok && log.contains("not taken as done, it read other data") && !log.contains("resuming"), "{log}");
    assert!(!checkpoint.exists());
    let recorded = std::fs::read_to_string(run_dir.join("student/data.sha256")).unwrap();
    let now = distill::data::DataDigest::of(&dir.path().join("train.tsv"), &dir.path().join("dev.tsv")).unwrap();
    assert!(now.check(&run_dir.join("student")).is_ok(), "{recorded}");
    assert!(distill(&["run", "c.toml"], false).1.contains("already finished"));
    // Trained again on newer data (`--force`) and stopped part-way: the checkpoint, which read
    // this data, is continued from; the stage's older result is not taken, nor an error.
    std::fs::write(dir.path().join("train.tsv"), "sentence\tlabel\nhello world\tneg\ngood day\tpos\n").unwrap();
    let (ok, log) = distill(&["run", "c.toml", "--force"], true);
    assert!(!ok && log.contains("stops here"), "{log}");
    let (ok, log) = distill(&["run", "c.toml"], false);
    assert!(ok && log.contains("trained again on this data, continuing from") && log.contains("resuming after step 1"), "{log}");
    // So does `distill sweep`, for a point whose finished stage read other data.
    std::fs::write(dir.path().join("s.toml"), format!("{toml}[sweep]\n\"student.lr\" = [1e-3, 2e-3]\n")).unwrap();
    let (ok, log) = distill(&["sweep", "s.toml"], false);
    assert!(ok && !log.contains("read other data"), "{log}");
    std::fs::write(dir.path().join("train.tsv"), "sentence\tlabel\nhello world\tneg\ngood day\tneg\n").unwrap();
    let (ok, log) = distill(&["sweep", "s.toml"], false);
    assert!(ok && log.matches("not taken as done, it read other data").count() == 2, "{log}");
}

/// A results row names the commit the binary was built from, wherever it runs: here from a
/// folder outside any git checkout, where asking git at run time would say nothing. So does
/// `distill --version`.
#[test]
fn cli_results_row_names_the_build_commit() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
name = "e2e-commit"
task = "chnsenticorp"
out_dir = "{out}"

[data]
dir = "{data}"
train_limit = 100
dev_limit = 50

[vocab]
kind = "jieba"
min_count = 1

[student]
embedding_dim = 8
hidden_size = 8
dropout = 0.0
max_seq_len = 32
optimizer = "adam"
lr = 1e-3
batch_size = 32
epochs = 1
"#,
        out = dir.path().join("runs").display(),
        data = shared("ChnSentiCorp")
    );
    std::fs::write(dir.path().join("tiny.toml"), toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir.path())
        .args(["run", "tiny.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = distill::report::read_results(&dir.path().join("runs/results.csv")).unwrap();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let recorded = &rows[0].git_commit;
    match head {
        Some(head) => assert!(recorded == &head || recorded == &format!("{head}-dirty"), "{recorded} vs HEAD {head}"),
        None => assert_eq!(recorded, "unknown"),
    }
    // `distill --version` names the same build.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("distill {} ({recorded})", env!("CARGO_PKG_VERSION")));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// `distill augment` shows sampled MRPC pairs with the rows made from them and what fired.
#[test]
fn cli_augment_previews_the_transfer_set() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["augment", "experiments/mrpc.toml", "--n", "2", "--set", "data.train_limit=40", "--set", "augment.p_pos=0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("transfer set: ") && text.contains("(n_iter 5, p_mask 0.1, p_pos 0, p_ng 0.25, seed 1); 2 of 40 sources shown"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with('#')).count(), 2, "{text}");
    assert!(text.contains("  |||  ") && (text.contains("masked ") || text.contains("-gram:")), "{text}");
}
