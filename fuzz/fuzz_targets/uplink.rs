//! Fuzz target `uplink`: the server's frame decoder, `decode::<Uplink>`.
//!
//! Invariants: decoding never panics; a frame that decodes re-encodes within
//! UPLINK_FRAME_MAX, no longer than the input, and decodes to the same message (rustls
//! `fuzz_message`).
#![no_main]

use ekattest_fuzz::round_trip;
use ekattest_protocol::Uplink;
use ekattest_protocol::limits::UPLINK_FRAME_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Some(msg) = round_trip::<Uplink>(frame, UPLINK_FRAME_MAX) {
        // Every kind has a name for the logs.
        assert!(["login", "answer"].contains(&msg.kind()));
    }
});
