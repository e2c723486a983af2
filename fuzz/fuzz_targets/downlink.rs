//! Fuzz target `downlink`: the agent's frame decoder, `decode::<Downlink>`.
//!
//! Invariants: decoding never panics; a frame that decodes re-encodes within
//! DOWNLINK_FRAME_MAX, no longer than the input, and decodes to the same message.
#![no_main]

use ekattest_fuzz::round_trip;
use ekattest_protocol::Downlink;
use ekattest_protocol::limits::DOWNLINK_FRAME_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Some(msg) = round_trip::<Downlink>(frame, DOWNLINK_FRAME_MAX) {
        assert!(["challenge", "accepted", "rejected"].contains(&msg.kind()));
    }
});
