//! Fuzz the http decoder through `new_decoder(Protocol::Http, …)` (see drive.rs).
#![no_main]

mod drive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drive::drive(deetune_protocols::Protocol::Http, data);
});
