//! Architecture checks over the source tree, in the style of rust-analyzer's `tidy` tests:
//! they read the code as text and fail with the file and line that breaks a rule of
//! ARCHITECTURE.md.

use std::path::{Path, PathBuf};

/// The stage modules: each is a machine that talks to the others only through events.
const STAGES: [&str; 8] = [
    "intake",
    "parse",
    "coordinate",
    "replicate",
    "repair",
    "handoff",
    "anti_entropy",
    "storage",
];

/// The files of a stage module allowed to read the clock, being I/O, not a machine: the mio
/// loop (the intake's driver) and what it answers `admin throttle` from (its gates take the
/// time of a change), and fjall's engine, which times its own fdatasync for the commit
/// stage's slow-flush warning (the simulator's engine reports zero, so its runs stay
/// deterministic).
const DRIVERS: [&str; 3] = [
    "intake/mod.rs",
    "intake/stats_source.rs",
    "storage/engine.rs",
];

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("source directory readable")
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every file of every stage module, with the stage it belongs to and its path under `src/`.
fn stage_files() -> Vec<(&'static str, String, PathBuf)> {
    let root = source_root();
    let mut files = Vec::new();
    for stage in STAGES {
        let mut paths = Vec::new();
        let dir = root.join(stage);
        if dir.is_dir() {
            rust_files(&dir, &mut paths);
        }
        let file = root.join(format!("{stage}.rs"));
        if file.is_file() {
            paths.push(file);
        }
        assert!(!paths.is_empty(), "stage module {stage} not found");
        for path in paths {
            let relative = path
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            files.push((stage, relative, path));
        }
    }
    files
}

/// The lines of a file that are not test code: a file whose name ends in `tests.rs`, or one
/// under a test module's own `tests/` directory, is all test code, and
/// in any other file everything from the first `#[cfg(test)]` on is.
fn product_lines(relative: &str, path: &Path) -> Vec<(usize, String)> {
    // A test module's file, or a file of a test module's own directory (`x/tests/y.rs`).
    if relative.ends_with("tests.rs") || relative.contains("/tests/") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).expect("source readable");
    text.lines()
        .enumerate()
        .take_while(|(_, line)| !line.trim_start().starts_with("#[cfg(test)]"))
        .map(|(i, line)| (i + 1, line.to_string()))
        .collect()
}

/// Goal: a stage module never imports another stage module (STYLE habit 17: imports point
/// down, to the event vocabulary and the pure paper modules). Method: every `crate::NAME`
/// path in a stage's files, tests included, must not name another stage.
#[test]
fn no_stage_module_imports_another_stage_module() {
    let mut violations = Vec::new();
    for (stage, relative, path) in stage_files() {
        let text = std::fs::read_to_string(&path).expect("source readable");
        for (number, line) in text.lines().enumerate() {
            for other in STAGES.iter().filter(|other| **other != stage) {
                let needle = format!("crate::{other}");
                let named = line.match_indices(&needle).any(|(at, _)| {
                    let next = line[at + needle.len()..].chars().next();
                    !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if named {
                    violations.push(format!("src/{relative}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "stage modules import other stage modules (use crate::event instead):\n{}",
        violations.join("\n")
    );
}

/// Goal: a stage's machine reads no clock, so the simulator's clock is the only one it sees
/// (TESTING.md §2). Method: no `Instant::now()` or `SystemTime::now()` in the product code of
/// a stage module, except the drivers (`DRIVERS`).
#[test]
fn stage_machines_read_no_clock() {
    let mut violations = Vec::new();
    for (_, relative, path) in stage_files() {
        if DRIVERS.contains(&relative.as_str()) {
            continue;
        }
        for (number, line) in product_lines(&relative, &path) {
            if line.contains("Instant::now()") || line.contains("SystemTime::now()") {
                violations.push(format!("src/{relative}:{number}: {}", line.trim()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "machines read the clock (take `now` from the driver):\n{}",
        violations.join("\n")
    );
}

/// Files that may hold a `HashMap` on a line marked `// never iterated (STYLE 20)`: habit 20
/// lets one hold data that no decision walks. The object cache looks its keys up on every
/// read and write, and evicts by its own FIFO; its map is wrapped in a type that offers
/// lookups only.
const UNORDERED_ALLOWED: &[&str] = &["storage/cache.rs"];

/// Ways to walk a map. Matched in an allowed file's product code
/// with the whitespace taken out, so a call split over lines by rustfmt is seen too.
const WALKS: &[&str] = &[
    ".iter(",
    ".iter_mut(",
    ".keys(",
    ".values(",
    ".values_mut(",
    ".drain(",
    ".into_iter(",
    ".into_keys(",
    ".into_values(",
    ".retain(",
    ".extract_if(",
];

/// Goal: decisions iterate ordered collections only, so one seed gives one run (STYLE
/// habit 20). Method: no `HashMap` or `HashSet` in the product code of a stage module, but on
/// a marked line of a file in `UNORDERED_ALLOWED`; there, the marked map's wrapper (`.0`) is
/// never walked and the marked type does not derive `Debug` (which would print it in hash
/// order).
#[test]
fn stage_modules_use_ordered_collections() {
    let mut violations = Vec::new();
    for (_, relative, path) in stage_files() {
        let allowed = UNORDERED_ALLOWED.contains(&relative.as_str());
        let lines = product_lines(&relative, &path);
        for (at, (number, line)) in lines.iter().enumerate() {
            let unordered = line.contains("HashMap") || line.contains("HashSet");
            let marked = allowed && line.ends_with("// never iterated (STYLE 20)");
            if unordered && !marked {
                violations.push(format!("src/{relative}:{number}: {}", line.trim()));
            }
            // A derived `Debug` on the marked type would print the map in hash order.
            let above = at
                .checked_sub(1)
                .map_or("", |above| lines[above].1.as_str());
            if marked && above.contains("derive(") && above.contains("Debug") {
                violations.push(format!("src/{relative}:{number}: derives Debug: {above}"));
            }
        }
        if allowed {
            let code: String = lines
                .iter()
                .map(|(_, line)| line.split("//").next().unwrap_or(""))
                .collect::<String>()
                .split_whitespace()
                .collect();
            for walk in WALKS {
                if code.contains(&format!(".0{walk}")) {
                    violations.push(format!("src/{relative}: walks its unordered map: {walk}"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "unordered collections in stage modules (use BTreeMap/BTreeSet):\n{}",
        violations.join("\n")
    );
}
