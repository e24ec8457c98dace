//! The configuration file: arbitrary text layered over the embedded default, deserialised and
//! its users compiled, as `--config` reads it. Never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = junction::check_config(text);
    }
});
