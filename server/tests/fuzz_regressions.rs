//! Replays, on the stable toolchain, every input the fuzz targets have crashed on (kept under
//! `tests/fuzz_regressions/`, named `<target>-<what>`) and the committed seed corpora of
//! `fuzz/corpus/`, through the same entry points the fuzz targets call.

use std::path::{Path, PathBuf};

use steadfast_server::fuzzing;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run(target: &str, data: &[u8]) {
    match target {
        "request_frame" => fuzzing::request_frames(data),
        "record_batch" => fuzzing::record_batches(data),
        "segment_recovery" => {
            let dir = tempfile::tempdir().expect("tempdir");
            fuzzing::segment_recovery(dir.path(), data);
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn crashing_inputs_found_by_fuzzing_no_longer_crash() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let inputs = files(&dir);
    assert!(
        !inputs.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    for path in inputs {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let target = name.split('-').next().expect("target prefix");
        let data = std::fs::read(&path).expect("read input");
        run(target, &data);
        println!("{name}: ok ({} bytes)", data.len());
    }
}

#[test]
fn the_seed_corpora_run_through_every_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in ["request_frame", "record_batch", "segment_recovery"] {
        let inputs = files(&corpus.join(target));
        assert!(!inputs.is_empty(), "empty corpus for {target}");
        for path in &inputs {
            run(target, &std::fs::read(path).expect("read input"));
        }
        println!("{target}: {} seeds ok", inputs.len());
    }
}
