//! Arbitrary segment and index files in a fresh directory, then partition recovery over
//! them, with the invariants of `steadfast_server::fuzzing::segment_recovery`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A RAM-backed directory when there is one: recovery writes and fsyncs files.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("sf-fuzz").tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = dir else { return };
    steadfast_server::fuzzing::segment_recovery(dir.path(), data);
});
