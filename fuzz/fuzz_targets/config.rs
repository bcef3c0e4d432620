#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srrrs_edge::fuzzing::config(data));
