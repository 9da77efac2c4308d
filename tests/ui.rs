//! Compile-fail tests of the derives (`steadfast-macros`): each `ui/fail/*.rs` must fail to compile with exactly
//! the errors in the `.stderr` beside it (regenerate them with `UI_BLESS=1`).
//!
//! The cases are checked by `rustc` directly against the steadfast and serde this test was
//! built with (the newest `libsteadfast-*.rlib` and `libserde-*.rlib` beside this binary and
//! older than it, their own dependencies found by hash in the same folder), so the suite
//! builds the dependency tree once rather than again in a project of the test's own. Paths and line numbers that are not the case's own are
//! normalised, so an edit elsewhere in steadfast does not change the expected output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

#[test]
fn each_fail_case_fails_with_its_expected_errors() {
    let deps = deps_dir();
    // What the cases use: steadfast, and serde for the messages' derives (the build of serde
    // steadfast was compiled against: a target folder can hold others).
    let steadfast = newest_rlib(&deps, "steadfast");
    let serde = dependency_of(&steadfast, &deps, "serde");
    let externs: Vec<(&str, PathBuf)> = vec![("steadfast", steadfast), ("serde", serde)];
    // The workspace's root, where the cases' paths and `$WORKSPACE` start.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir;
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&out_dir).expect("create the output folder of the ui cases");
    let bless = std::env::var_os("UI_BLESS").is_some();

    let mut cases: Vec<PathBuf> = std::fs::read_dir(manifest_dir.join("tests/ui/fail"))
        .expect("read tests/ui/fail")
        .map(|e| e.expect("read tests/ui/fail").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in tests/ui/fail");

    // Two at a time: each rustc loads steadfast's metadata and type-checks one small crate.
    let results: Vec<(PathBuf, Result<(), String>)> = std::thread::scope(|s| {
        let chunks: Vec<&[PathBuf]> = cases.chunks(cases.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (deps, externs, out_dir) = (&deps, &externs, &out_dir);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|case| {
                            let r = check_case(
                                case,
                                manifest_dir,
                                workspace,
                                deps,
                                externs,
                                out_dir,
                                bless,
                            );
                            (case.clone(), r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a ui worker thread panicked"))
            .collect()
    });

    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(case, r)| r.err().map(|e| format!("{}: {e}", case.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of the ui cases did not fail as expected (UI_BLESS=1 rewrites the .stderr files):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Compiles one case (type checking only, as `cargo check` would) and compares its
/// normalised errors with the `.stderr` beside it.
fn check_case(
    case: &Path,
    manifest_dir: &Path,
    workspace: &Path,
    deps: &Path,
    externs: &[(&str, PathBuf)],
    out_dir: &Path,
    bless: bool,
) -> Result<(), String> {
    let relative = case
        .strip_prefix(manifest_dir)
        .expect("cases are under the crate");
    let name = case
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("case names are UTF-8");
    let output =
        Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .current_dir(manifest_dir)
            .args([
                "--edition",
                "2021",
                "--crate-type",
                "bin",
                "--emit",
                "metadata",
            ])
            .args([
                "--crate-name",
                name,
                "--color",
                "never",
                "--diagnostic-width",
                "140",
            ])
            .arg("--out-dir")
            .arg(out_dir)
            .arg("-L")
            .arg(format!("dependency={}", deps.display()))
            .args(externs.iter().flat_map(|(name, rlib)| {
                ["--extern".to_owned(), format!("{name}={}", rlib.display())]
            }))
            .arg(relative)
            .output()
            .map_err(|e| format!("cannot run rustc: {e}"))?;
    if output.status.success() {
        return Err("compiled, but must fail".into());
    }
    let actual = normalise(&String::from_utf8_lossy(&output.stderr), workspace);
    let expected_path = case.with_extension("stderr");
    if bless {
        std::fs::write(&expected_path, &actual).map_err(|e| format!("cannot write: {e}"))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("cannot read {}: {e}", expected_path.display()))?;
    if expected.trim_end() == actual.trim_end() {
        Ok(())
    } else {
        Err(format!(
            "errors differ\n--- expected ({})\n{}\n--- actual\n{}",
            expected_path.display(),
            expected.trim_end(),
            actual.trim_end()
        ))
    }
}

/// Rustc's errors with what depends on the machine or on code outside the case replaced:
/// the workspace path by `$WORKSPACE`, the toolchain's and the registry's sources by `$RUST`
/// and `$CARGO`, line numbers in those files blanked, and the trailing summary lines (which
/// name the crate) dropped.
fn normalise(stderr: &str, workspace: &Path) -> String {
    let workspace = workspace.display().to_string();
    let mut out = Vec::new();
    // Whether the lines being read quote a file other than the case.
    let mut foreign = false;
    for line in stderr.lines() {
        if line.starts_with("error: aborting due to")
            || line.starts_with("Some errors have detailed explanations")
            || line.starts_with("For more information about an error")
            || line.starts_with("For more information about this error")
        {
            continue;
        }
        let mut line = line.replace(&workspace, "$WORKSPACE");
        if let Some(at) = line.find("--> ").or_else(|| line.find("::: ")) {
            let path = &line[at + 4..];
            foreign = !path.starts_with("tests/ui/");
            if foreign {
                let path = foreign_path(path);
                line = format!("{}{}", &line[..at + 4], path);
            }
        } else if foreign {
            // A quoted line of a foreign file: `123 |   code` loses its number.
            let trimmed = line.trim_start();
            let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
            if digits > 0 && trimmed[digits..].trim_start().starts_with('|') {
                let indent = line.len() - trimmed.len();
                line = format!("{}{}", " ".repeat(indent + digits), &trimmed[digits..]);
            }
            if !line.starts_with(' ') {
                foreign = false;
            }
        }
        out.push(line);
    }
    let mut text = out.join("\n");
    // "and 12 others" changes with the traits implemented elsewhere.
    let mut from = 0;
    while let Some(found) = text[from..].find("and ") {
        let start = from + found + "and ".len();
        let digits = text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        if digits > 0 && text[start + digits..].starts_with(" others") {
            text.replace_range(start..start + digits, "$N");
        }
        from = start;
    }
    text.trim_end().to_owned() + "\n"
}

/// A foreign file's location without its line and column, the toolchain and the registry
/// folded to `$RUST` and `$CARGO`.
fn foreign_path(path: &str) -> String {
    let file = path.split(':').next().unwrap_or(path);
    if let Some(at) = file.find("/library/") {
        if file.starts_with("/rustc/") || file.contains("/lib/rustlib/") {
            return format!("$RUST{}", &file[at + "/library".len()..]);
        }
    }
    if let Some(at) = file.find("/registry/src/") {
        let rest = &file[at + "/registry/src/".len()..];
        let after_index = rest.split_once('/').map_or(rest, |(_, r)| r);
        return format!("$CARGO/{after_index}");
    }
    file.to_owned()
}

/// The folder holding this test binary and the rlibs it was linked with.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .expect("the test binary is in a folder")
        .to_path_buf()
}

/// The `lib<name>-*.rlib` in `deps` this test was built with: the most recently built one
/// that is older than this test binary (which is linked after its dependencies; a build of
/// the same crate by another invocation afterwards, into the same folder, is newer).
fn newest_rlib(deps: &Path, name: &str) -> PathBuf {
    let prefix = format!("lib{name}-");
    let candidates = rlibs(deps, &prefix);
    let modified = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let linked = modified(&std::env::current_exe().expect("the test binary's path"));
    candidates
        .into_iter()
        .filter(|p| modified(p) <= linked)
        .max_by_key(|p| modified(p))
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}*.rlib older than this test in {}: build the tests with cargo",
                deps.display()
            )
        })
}

/// The `<prefix>*.rlib` files in `deps`.
fn rlibs(deps: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(deps)
        .expect("read the deps folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "rlib")
                && p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(prefix))
        })
        .collect()
}

/// The build of crate `name` that `rlib` was compiled against: of the `lib<name>-<hash>.rlib`
/// files in `deps`, the one whose `-<hash>` suffix `rlib`'s metadata records (rustc keeps each
/// dependency's file-name suffix there, to find it again).
fn dependency_of(rlib: &Path, deps: &Path, name: &str) -> PathBuf {
    let prefix = format!("lib{name}-");
    let metadata =
        std::fs::read(rlib).unwrap_or_else(|e| panic!("cannot read {}: {e}", rlib.display()));
    let recorded = |candidate: &PathBuf| {
        let file = candidate.file_stem().and_then(|f| f.to_str()).unwrap_or("");
        let suffix = &file[prefix.len() - 1..];
        metadata
            .windows(suffix.len())
            .any(|w| w == suffix.as_bytes())
    };
    let mut found: Vec<PathBuf> = rlibs(deps, &prefix).into_iter().filter(recorded).collect();
    assert_eq!(
        found.len(),
        1,
        "{}: expected one {prefix}*.rlib recorded in its metadata, found {found:?}",
        rlib.display()
    );
    found.remove(0)
}
