//! `#[needs_root]`: see `testkit::needs_root`.

use proc_macro::TokenStream;

/// The environment variable that turns root-only tests on. Read when this
/// crate is compiled: `option_env!` records it in rustc's dep-info, so cargo
/// rebuilds this crate, and the tests that use it, when it changes.
const ENABLED: Option<&str> = option_env!("SWITCHYARD_ROOT_TESTS");

/// Marks a test that needs root and network namespaces. Unless the build ran
/// with `SWITCHYARD_ROOT_TESTS=1` (as `./x test` and `./x vm test` do), the
/// test gets `#[ignore = "needs root and network namespaces ..."]`, so a
/// plain `cargo test` reports it as ignored instead of passing it silently.
/// Put it above the test attribute (`#[needs_root] #[tokio::test] async fn ...`).
#[proc_macro_attribute]
pub fn needs_root(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return "compile_error!(\"#[needs_root] takes no arguments\");".parse().unwrap_or_default();
    }
    if matches!(ENABLED, Some("1" | "true" | "yes")) {
        return item;
    }
    let mut out: TokenStream =
        "#[ignore = \"needs root and network namespaces (build with SWITCHYARD_ROOT_TESTS=1, as ./x test does)\"]"
            .parse()
            .unwrap_or_default();
    out.extend(item);
    out
}
