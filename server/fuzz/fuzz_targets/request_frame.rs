//! Bytes as received on a connection: frames, request headers, and the body of every served
//! API at every served version, decoded as the handlers decode them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    steadfast_server::fuzzing::request_frames(data);
});
