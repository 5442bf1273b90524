//! Fuzz the redis decoder through `new_decoder(Protocol::Redis, …)` (see drive.rs).
#![no_main]

mod drive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drive::drive(deetune_protocols::Protocol::Redis, data);
});
