#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srrrs_edge::fuzzing::proxy_header(data));
