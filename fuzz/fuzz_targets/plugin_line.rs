//! The plugin protocol: any line a plugin sends decodes to a message, a
//! blank, or a violation, never a panic; a decoded message survives an
//! encode/decode round trip. Lines the daemon sends (decoded by a plugin
//! written against this crate) and the schema validator are fuzzed too.
#![no_main]

use backend_plugin::protocol::{DaemonMessage, decode_plugin_line, encode};
use backend_plugin::schema::{Direction, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(message)) = decode_plugin_line(data) {
        let line = encode(&message).expect("a decoded message encodes");
        let again = decode_plugin_line(line.as_bytes()).expect("an encoded message decodes");
        assert_eq!(again.as_ref(), Some(&message), "round trip of {line}");
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = validate(Direction::ToPlugin, &value);
        let _ = serde_json::from_value::<DaemonMessage>(value);
    }
});
