//! A produce request's records: batch splitting, header and CRC checks, the producer
//! sequence check, and reading the records with bounded decompression.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    steadfast_server::fuzzing::record_batches(data);
});
