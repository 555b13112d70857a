//! The configuration file: any text is either a configuration or a list
//! of problems, each naming its path; never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxy_core::Registry;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(proxy_daemon::default_registry)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match proxy_daemon::config::load_yaml_str(&text, registry()) {
        Ok(cfg) => {
            // What /configz would serve.
            let _ = serde_json::to_string(&cfg);
            assert!(cfg.min_sync_period <= cfg.sync_period);
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error lists at least one problem");
            let _ = e.to_string();
        }
    }
});
